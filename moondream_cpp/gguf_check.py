"""Validate GGUF files in Python before llama.cpp sees them: llama.cpp aborts the process on some bad files."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from gguf import GGUFValueType as T
from gguf import TokenType

from . import gguf_rules, spec, spec2025
from .errors import ModelFileError
from .gguf_header import MAGIC, HeaderError, TensorEntry, read_header
from .gguf_tensors import check_tensors, mmproj_table, mmproj_table_2025, text_table

# element types of the array keys that llama.cpp reads with a fixed type
_ARRAY_ITEM = {
    "tokenizer.ggml.tokens": T.STRING,
    "tokenizer.ggml.token_type": T.INT32,
    "tokenizer.ggml.merges": T.STRING,
    "clip.vision.image_mean": T.FLOAT32,
    "clip.vision.image_std": T.FLOAT32,
    "clip.vision.feature_layer": T.INT32,
}
_KIND_OF_ARCH = {spec.ARCH_TEXT: "text", spec.ARCH_MMPROJ: "mmproj"}
# every key we know, with the type it must have: llama.cpp's, our 2024 moondream.* keys, the 2025 family's
_TEXT_KEYS = spec.TEXT_KEYS | spec2025.TEXT_KEYS_2025
_MMPROJ_KEYS = spec.MMPROJ_KEYS | spec2025.MMPROJ_KEYS_2025
MIN_QUESTION_POSITIONS = 16  # a model's context must hold its image and at least this much question and answer


@dataclass
class GGUFFile:
    path: Path
    arch: str
    keys: Mapping
    tensors: dict  # name -> (PyTorch-order shape, ggml type name)
    size: int
    entries: Mapping[str, TensorEntry]  # name -> the header's entry (ggml-order shape, type, offset, bytes)

    def get(self, key, default=None):
        return self.keys.get(key, default)


@dataclass
class TextInfo:
    file: GGUFFile
    n_embd: int
    n_layer: int
    n_vocab: int
    n_ctx: int
    revision: spec.Revision  # 2025 files: their name with the 2024 fields they state (no markers, stop at EOS)
    has_our_metadata: bool
    n_real_tokens: int
    add_bos: bool
    quant: str = field(default="")
    family: str = "2024"  # "2025": multi-crop vision, prefix attention, templates as ids (docs/architecture.md §9)
    revision_2025: spec2025.Revision2025 | None = None  # the 2025 revision's templates, ids and sampling
    tokenizer_kind: str = "gpt2"  # "gpt2": llama.cpp tokenizes; "starmie": the tokenizers library on tokenizer_json
    tokenizer_json: str | None = None
    prefix_rows: int = 0  # rows evaluated with bidirectional attention (BOS + image); 0: causal throughout (2024)

    @property
    def revision_name(self) -> str:
        return self.revision.name


@dataclass
class MmprojInfo:
    file: GGUFFile
    image_size: int
    n_patches: int
    n_embd_out: int
    n_blocks_run: int
    family: str = "2024"
    revision_name: str | None = None  # 2025 files name their revision; 2024 files do not
    feature_length: int = 0  # the leading columns of mtmd's rows that carry the image (2024: all of them)
    max_crops: int = 1
    overlap_margin: int = 0  # patches cut from each inner side of a local crop
    passthrough: bool = False  # mtmd hands out vision features; md.proj.* projects them (numpy)
    patch_size: int = spec2025.PATCH_SIZE  # pixels a patch side: crop_size // patch_size is the grid

    @property
    def crop_size(self) -> int:
        return self.image_size


def read_gguf(path: str | os.PathLike, expected_kind: str) -> GGUFFile:
    """Parse header, keys and tensor table; check key types and that every tensor lies inside the file."""
    path = Path(path)
    flag = "--text" if expected_kind == "text" else "--mmproj"
    if not path.exists():
        raise ModelFileError(f"{path}: no such file (given as the {expected_kind} model)")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory; pass a .gguf file to {flag}, or the directory to --model")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes): the download or conversion did not finish; redo it")
    if magic != MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (it starts with {magic!r}); pass a .gguf model file")
    try:
        header = read_header(path)
    except (HeaderError, OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path} is corrupt or truncated ({e}); re-download or re-convert it") from None
    keys = header.values
    types = {k: [t for t in v if t is not None] for k, v in header.types.items()}
    arch = keys.get("general.architecture")
    if not isinstance(arch, str) or arch not in _KIND_OF_ARCH:
        raise ModelFileError(f"{path} has architecture {arch!r}; moondream-cpp needs a phi2 text model and a clip "
                             "mmproj")
    kind = _KIND_OF_ARCH[arch]
    if kind != expected_kind:
        other = "--mmproj" if kind == "mmproj" else "--text"
        raise ModelFileError(f"{path} is a {kind} file (arch {arch}) but was given as the {expected_kind} model; "
                             f"pass it with {other}")
    table = _TEXT_KEYS if kind == "text" else _MMPROJ_KEYS
    for key, want in table.items():
        if key not in types:
            continue
        got = types[key]
        if got[0] != want or (want == T.ARRAY and key in _ARRAY_ITEM and (len(got) < 2 or got[1] != _ARRAY_ITEM[key])):
            shown = "/".join(t.name for t in got)
            raise ModelFileError(f"{path}: metadata key {key} has type {shown}, llama.cpp needs "
                                 f"{want.name}{'/' + _ARRAY_ITEM[key].name if key in _ARRAY_ITEM else ''}; "
                                 "the file was written by a broken converter: re-convert it with moondream-cpp convert")
    required = spec.TEXT_REQUIRED if kind == "text" else spec.MMPROJ_REQUIRED
    missing = [k for k in required if k not in keys]
    if missing:
        raise ModelFileError(f"{path}: required metadata missing: {', '.join(missing)}; re-convert the model")
    unknown = gguf_rules.unknown_keys(keys, arch, spec.TEXT_KEYS if kind == "text" else spec.MMPROJ_KEYS)
    if unknown:
        raise ModelFileError(f"{path}: metadata key(s) {', '.join(unknown[:3])} are not part of a moondream model: "
                             "llama.cpp would act on them (some values abort it); re-convert the model")
    tensors, entries = {}, {}
    for t in header.tensors:
        if t.offset + t.nbytes > size:
            raise ModelFileError(f"{path} is truncated: tensor {t.name} ends past the end of the file "
                                 f"({size} bytes); re-download or re-convert it")
        tensors[t.name] = (tuple(reversed(t.ne)), t.ggml_type)
        entries[t.name] = t
    return GGUFFile(path, arch, keys, tensors, size, entries)


def _refuse(f: GGUFFile, problem: str | None) -> None:
    if problem:
        raise ModelFileError(f"{f.path}: {problem}; llama.cpp cannot run this file (it would abort): re-convert it")


def _rows(f: GGUFFile, name: str) -> int:
    """The first (PyTorch-order) dimension of a tensor that shapes others: the vocabulary, the projector widths."""
    if name not in f.entries:
        raise ModelFileError(f"{f.path}: missing tensor(s) {name}; the file is incomplete: re-convert it")
    ne = f.entries[name].ne
    return int(ne[-1]) if ne else 0


def check_text(path) -> TextInfo:
    f = read_gguf(path, "text")
    k = f.keys
    n_embd, n_layer, n_head = int(k["phi2.embedding_length"]), int(k["phi2.block_count"]), \
        int(k["phi2.attention.head_count"])
    n_ff = int(k["phi2.feed_forward_length"])
    if "phi2.attention.layer_norm_epsilon" not in k:
        _refuse(f, "phi2.attention.layer_norm_epsilon is missing")
    _refuse(f, gguf_rules.text_dims_problem(
        n_embd=n_embd, n_head=n_head, n_head_kv=int(k.get("phi2.attention.head_count_kv", n_head)), n_layer=n_layer,
        n_ff=n_ff, n_rot=int(k["phi2.rope.dimension_count"]), n_ctx=int(k["phi2.context_length"]),
        eps=k["phi2.attention.layer_norm_epsilon"]))
    n_vocab = _rows(f, "token_embd.weight")
    check_tensors(f.path, f.entries, text_table(f.entries, n_embd=n_embd, n_ff=n_ff, n_vocab=n_vocab,
                                                n_layer=n_layer))
    tokens = k["tokenizer.ggml.tokens"]
    if len(tokens) != n_vocab:
        raise ModelFileError(f"{f.path}: {len(tokens)} tokenizer tokens but {n_vocab} embedding rows; re-convert it")
    _refuse(f, gguf_rules.text_keys_problem(k, n_vocab))
    types = k.get("tokenizer.ggml.token_type")
    types = np.ones(len(tokens), np.int32) if types is None else np.asarray(types)
    real = np.nonzero(types != TokenType.UNUSED)[0]  # UNUSED rows only pad the matrix
    if real.size == 0:
        raise ModelFileError(f"{f.path}: every tokenizer token is marked unused; re-convert it")
    n_real = int(real.max()) + 1
    n_ctx = int(k["phi2.context_length"])
    _refuse(f, gguf_rules.family_problem(k))
    common = dict(has_our_metadata=spec.MD_REVISION in k, n_real_tokens=n_real,
                  add_bos=bool(k.get("tokenizer.ggml.add_bos_token", False)), quant=f.tensors["blk.0.ffn_up.weight"][1])
    if k.get(spec2025.MD_FAMILY) == "2025":
        _refuse(f, gguf_rules.text_2025_problem(k, n_vocab, n_ctx))
        rev = spec2025.REVISIONS_2025[k[spec.MD_REVISION]]
        return TextInfo(f, n_embd, n_layer, n_vocab, n_ctx, _as_2024_revision(rev, k), **common, family="2025",
                        revision_2025=rev, tokenizer_kind=rev.tokenizer,
                        tokenizer_json=k.get(spec2025.MD_TOKENIZER_JSON), prefix_rows=int(k[spec2025.MD_PREFIX_ROWS]))
    rev_name = k.get(spec.MD_REVISION) or spec.DEFAULT_REVISION
    if rev_name not in spec.REVISIONS:
        raise ModelFileError(f"{f.path}: unknown moondream revision {rev_name!r} in its metadata")
    return TextInfo(f, n_embd, n_layer, n_vocab, n_ctx, spec.REVISIONS[rev_name], **common)


def _as_2024_revision(rev: spec2025.Revision2025, keys: Mapping) -> spec.Revision:
    """The 2024 view of a 2025 revision, for code that reads spec.Revision: no image markers or answer prefix
    (2025 templates are token ids), answers end at EOS, the tower's tanh GELU and eps."""
    return spec.Revision(rev.name, False, "", "eos", "tanh", float(keys.get(spec.MD_VISION_EPS, 1e-5)),
                         int(keys.get(spec.MD_MAX_NEW_TOKENS, rev.max_tokens)))


def check_mmproj(path) -> MmprojInfo:
    f = read_gguf(path, "mmproj")
    k = f.keys
    n_blocks = int(k["clip.vision.block_count"])
    width = int(k["clip.vision.embedding_length"])
    image, patch = int(k["clip.vision.image_size"]), int(k["clip.vision.patch_size"])
    n_ff = int(k["clip.vision.feed_forward_length"])
    _refuse(f, gguf_rules.mmproj_keys_problem(k, n_blocks) or gguf_rules.vision_dims_problem(
        n_embd=width, n_head=int(k["clip.vision.attention.head_count"]), n_ff=n_ff, n_layer=n_blocks,
        image_size=image, patch_size=patch, eps=k["clip.vision.attention.layer_norm_epsilon"]))
    n_patches = (image // patch) ** 2
    out = _rows(f, "mm.2.weight")
    _refuse(f, gguf_rules.family_problem(k))
    is_2025 = k.get(spec2025.MD_FAMILY) == "2025"
    if is_2025:
        _refuse(f, gguf_rules.mmproj_2025_problem(k, width, image, patch))
        table = mmproj_table_2025(f.path, f.entries, n_embd=width, n_ff=n_ff, n_layer=n_blocks, patch=patch,
                                  n_patches=n_patches, text_width=out)
    else:
        table = mmproj_table(n_embd=width, n_ff=n_ff, n_layer=n_blocks, patch=patch, n_patches=n_patches,
                             hidden=_rows(f, "mm.0.weight"), out_width=out)
    check_tensors(f.path, f.entries, table)
    layers = k.get("clip.vision.feature_layer")
    layers = [] if layers is None else [int(x) for x in layers]
    # without feature_layer, mtmd runs block_count-1 blocks (LLaVA habit); the duplicate-block layout relies on it
    n_run = max(layers) if layers else n_blocks - 1
    if not is_2025:
        return MmprojInfo(f, image, n_patches, out, n_run, feature_length=out, patch_size=patch)
    return MmprojInfo(f, image, n_patches, out, n_run, family="2025", revision_name=k[spec.MD_REVISION],
                      feature_length=width, max_crops=int(k[spec2025.MD_MAX_CROPS]),
                      overlap_margin=int(k[spec2025.MD_OVERLAP_MARGIN]), passthrough=True, patch_size=patch)


def check_pair(text_path, mmproj_path) -> tuple[TextInfo, MmprojInfo]:
    text, mm = check_text(text_path), check_mmproj(mmproj_path)
    if mm.n_embd_out != text.n_embd:
        raise ModelFileError(f"these files do not belong together: {mm.file.path.name} projects images to width "
                             f"{mm.n_embd_out} but {text.file.path.name} has width {text.n_embd}; use the mmproj "
                             "converted from the same checkpoint")
    if text.family != mm.family or text.revision.name != (mm.revision_name or text.revision.name):
        raise ModelFileError(f"these files do not belong together: {text.file.path.name} is moondream "
                             f"{text.family} ({text.revision.name}) but {mm.file.path.name} is "
                             f"{mm.family}{' (' + mm.revision_name + ')' if mm.revision_name else ''}; use the "
                             "mmproj converted from the same checkpoint")
    if text.family == "2025" and text.prefix_rows != 1 + mm.n_patches:
        raise ModelFileError(f"{text.file.path.name} evaluates a {text.prefix_rows}-row prefix, but BOS and "
                             f"{mm.file.path.name}'s {mm.n_patches} image rows make {1 + mm.n_patches}; re-convert")
    if text.n_ctx < mm.n_patches + MIN_QUESTION_POSITIONS:
        raise ModelFileError(f"{text.file.path.name}'s context of {text.n_ctx} positions cannot hold the "
                             f"{mm.n_patches} image positions of {mm.file.path.name} and a question")
    return text, mm


def find_pair(directory: Path) -> tuple[Path, Path]:
    """The one text + mmproj pair in a directory, told apart by architecture (validation follows in check_pair)."""
    by_arch: dict[str, list[Path]] = {spec.ARCH_TEXT: [], spec.ARCH_MMPROJ: []}
    for p in sorted(directory.glob("*.gguf")):
        try:
            arch = read_header(p).values.get("general.architecture")
        except (HeaderError, OSError):
            arch = None  # unreadable: not a candidate
        by_arch.setdefault(arch if isinstance(arch, str) else None, []).append(p)
    texts, mmprojs = by_arch[spec.ARCH_TEXT], by_arch[spec.ARCH_MMPROJ]
    if len(texts) != 1 or len(mmprojs) != 1:
        raise ModelFileError(f"{directory} should hold exactly one text GGUF and one mmproj GGUF; found text: "
                             f"{[p.name for p in texts]}, mmproj: {[p.name for p in mmprojs]}. Pass --text and "
                             "--mmproj to choose")
    return texts[0], mmprojs[0]
