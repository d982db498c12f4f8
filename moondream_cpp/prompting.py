"""How a loaded model is asked and how its answers end, per family: the 2024 models take text prompts
(moondream_cpp/prompt.py), the 2025 ones token-id templates after a bidirectional image prefix (spec2025). The
runtime holds one `Prompting` and never asks which family it has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from . import spec, spec2025
from .errors import ModelFileError, MoondreamError
from .prompt import prompt_items


@dataclass
class Prompting:
    name: str  # the revision's name
    family: str  # "2024" or "2025"
    tokenize: Callable[[str], list[int]]
    token_bytes: Callable[[int], bytes]
    bos: int
    eos: int
    stop_ids: set
    masked: tuple  # token ids never sampled
    end_marker: bool  # the answer may end in a piece of "<END>" to cut
    prefix_attention: bool  # BOS + image attend both ways (one batch)
    max_tokens: int
    temperature: float  # defaults where the caller sets none
    top_p: float
    caption_lengths: tuple
    revision: object  # spec.Revision or spec2025.Revision2025
    query_items: Callable[[str, int, str, Sequence[tuple[str, str]]], list] = None
    caption_items: Callable[[str, int, str], list] = None
    # raises MoondreamError for a length this model has no caption of; `what` names the setting for the user
    check_caption: Callable[[str, str], None] = None


def _image_prefix(bos: int, key: str, n_rows: int) -> list:
    return [bos] + [(key, j) for j in range(n_rows)]


def for_2024(rev: spec.Revision, tokenize, token_bytes, bos: int, eos: int) -> Prompting:
    # "<END>" revisions stopped on ANY token of the marker (docs/architecture.md §5, P8)
    stop_ids = {eos} if rev.stop_rule == "eos" else set(tokenize(spec.END_MARKER))

    def query(key, n_rows, question, history):
        return prompt_items(rev, key, n_rows, question, history, tokenize, bos)

    def caption(key, n_rows, length):
        return prompt_items(rev, key, n_rows, spec.caption_question(length, "caption length"), (), tokenize, bos)

    return Prompting(rev.name, "2024", tokenize, token_bytes, bos, eos, stop_ids, (), rev.stop_rule == "end_marker",
                     False, rev.max_new_tokens, 0.0, 1.0, tuple(spec.CAPTION_QUESTIONS), rev, query, caption,
                     lambda length, what: spec.caption_question(length, what) and None)


def for_2025(rev: spec2025.Revision2025, tokenize, token_bytes) -> Prompting:
    def query(key, n_rows, question, history):
        # upstream asks each question alone about the image: earlier turns are not part of a 2025 prompt
        t = rev.query
        return _image_prefix(rev.bos, key, n_rows) + [*t.before, *tokenize(spec2025.template_text(t, question)),
                                                      *t.after]

    def check(length, what="caption length"):
        if length not in rev.captions:
            extra = "; long captions came with 2025-03-27" if length == "long" else ""
            raise MoondreamError(f"{what} must be one of {', '.join(rev.captions)} for revision {rev.name}, "
                                 f"not {length!r}{extra}")

    def caption(key, n_rows, length):
        check(length)
        return _image_prefix(rev.bos, key, n_rows) + list(rev.captions[length])

    return Prompting(rev.name, "2025", tokenize, token_bytes, rev.bos, rev.eos, {rev.eos}, rev.masked, False, True,
                     rev.max_tokens, rev.temperature, rev.top_p, tuple(rev.captions), rev, query, caption, check)


def of_file(text_info, revision: str | None, text_model) -> Prompting:
    """The Prompting a loaded text GGUF asks for (`revision`: the caller's override of the file's own)."""
    keys = text_info.file.keys
    if keys.get(spec2025.MD_FAMILY) == "2025":
        rev = spec2025.REVISIONS_2025.get(revision or keys.get(spec.MD_REVISION))
        if rev is None:
            raise ModelFileError(f"{text_info.file.path} is moondream revision {keys.get(spec.MD_REVISION)!r}, "
                                 "which this version of moondream-cpp does not know; upgrade moondream-cpp")
        if rev.tokenizer == "starmie":
            from .starmie import StarmieTokenizer

            tok = StarmieTokenizer(str(keys.get(spec2025.MD_TOKENIZER_JSON, "")))
            return for_2025(rev, tok.tokenize, tok.token_bytes)
        return for_2025(rev, text_model.tokenize, text_model.token_bytes)
    rev = spec.REVISIONS[revision] if revision else spec.revision_of_file(text_info.revision, keys)
    bos = int(text_info.file.get("tokenizer.ggml.bos_token_id", 50256))
    eos = int(text_info.file.get("tokenizer.ggml.eos_token_id", bos))
    return for_2024(rev, text_model.tokenize, text_model.token_bytes, bos, eos)
