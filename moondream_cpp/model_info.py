"""What a GGUF pair (or one file) holds, from its header alone: for `moondream-cpp info` and Python."""
from __future__ import annotations

import os

from . import gguf_check, spec, spec2025
from .errors import ModelFileError
from .gguf_header import HeaderError, read_header


def _text(info: gguf_check.TextInfo) -> dict:
    f, r = info.file, info.revision
    out = {"file": str(f.path), "bytes": f.size, "arch": f.arch, "name": f.get("general.name", ""),
           "weights": info.quant, "layers": info.n_layer, "width": info.n_embd, "vocab": info.n_vocab,
           "context": info.n_ctx, "revision": r.name, "family": info.family,
           "prompt": ("<image> markers, " if r.image_markers else "") + f"answer prefix {r.answer_prefix!r}",
           "stop_rule": r.stop_rule, "our_metadata": info.has_our_metadata,
           "chat_template": "tokenizer.chat_template" in f.keys}
    if info.family == "2025":
        r25 = spec2025.REVISIONS_2025[info.revision_name]
        out.update(prompt=f"token templates after a {info.prefix_rows}-row bidirectional image prefix",
                   stop_rule=f"eos id {r25.eos}" + (f", ids {list(r25.masked)} never sampled" if r25.masked else ""),
                   tokenizer=info.tokenizer_kind, caption_lengths=list(r25.captions),
                   sampling=("greedy" if r25.temperature == 0 else
                             f"temperature {r25.temperature}, top_p {r25.top_p}"),
                   max_tokens=r25.max_tokens)
    return out


def _mmproj(info: gguf_check.MmprojInfo) -> dict:
    f = info.file
    k = f.keys
    return {"file": str(f.path), "bytes": f.size, "arch": f.arch, "projector": k.get("clip.projector_type"),
            "weights": f.tensors["v.blk.0.attn_q.weight"][1], "image_size": info.image_size,
            "patch_size": int(k["clip.vision.patch_size"]), "image_tokens": info.n_patches,
            "vision_blocks": int(k["clip.vision.block_count"]), "blocks_run": info.n_blocks_run,
            "width": int(k["clip.vision.embedding_length"]), "output_width": info.n_embd_out,
            **({"family": "2025", "max_crops": min(info.max_crops, spec2025.MAX_CROPS),
                "overlap_margin": info.overlap_margin,
                "projector": "md.proj (2304-wide, run in numpy after pooling); clip's mm.* pass features through"}
               if info.family == "2025" else {})}


def describe(model: str | os.PathLike) -> dict:
    """{'text': {...}, 'mmproj': {...}} for a model name, directory or pair; one of them for a single file."""
    from .gguf_check import find_pair  # imports no native code
    from .store import resolve

    first, second = resolve(model)
    if second is None and first.is_file():
        try:
            arch = read_header(first).values.get("general.architecture")
        except (HeaderError, OSError) as e:
            raise ModelFileError(f"{first} is not a readable GGUF file ({e})") from None
        arch = arch if isinstance(arch, str) else repr(arch)  # any type, a list or an array included
        if arch == spec.ARCH_TEXT:
            return {"text": _text(gguf_check.check_text(first))}
        if arch == spec.ARCH_MMPROJ:
            return {"mmproj": _mmproj(gguf_check.check_mmproj(first))}
        raise ModelFileError(f"{first} has architecture {arch!r}, neither a phi2 text model nor a clip mmproj")
    if second is None:
        first, second = find_pair(first)
    text, mm = gguf_check.check_pair(first, second)
    return {"text": _text(text), "mmproj": _mmproj(mm), "total_bytes": text.file.size + mm.file.size}
