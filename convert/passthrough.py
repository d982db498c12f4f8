"""The pass-through projector of a 2025 mmproj (docs/architecture.md §9.2): clip's "mlp" projector set up so that mtmd
hands out the vision tower's post_ln features unchanged, zero-padded to the text width.

mm.0 = I with bias B, GELU, mm.2 = [I; 0] with bias [-B; 0]. A LayerNorm output's entries are bounded by
sqrt(n)|w_c| + |b_c|, so with B_c = ceil(sqrt(n))|w_c| + |b_c| + 16 every GELU input is >= 10, where ggml's GELU
(CPU table with its clamp, and the tanh formula) returns its input exactly. Both matrices stay f32: an f16 or quantized
weight would round the activations too. After llama.cpp's quantizer, which quantizes every 2-D `.weight` of a clip
file, `restore_f32` writes them back as f32.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

MARGIN = 16.0  # >= 10 (the GELU identity threshold) with room for rounding


def lift(post_ln_w: np.ndarray, post_ln_b: np.ndarray) -> np.ndarray:
    """B: per channel, more than the largest |value| post_ln can produce, plus the margin."""
    bound = math.isqrt(len(post_ln_w) - 1) + 1  # >= sqrt(n - 1), the largest |(x - mean) / std| of n values
    return (bound * np.abs(post_ln_w.astype(np.float64)) + np.abs(post_ln_b.astype(np.float64)) + MARGIN) \
        .astype(np.float32)


def tensors(post_ln_w: np.ndarray, post_ln_b: np.ndarray, text_width: int) -> dict[str, np.ndarray]:
    width = len(post_ln_w)
    b = lift(post_ln_w, post_ln_b)
    out_w = np.zeros((text_width, width), np.float32)
    out_w[:width] = np.eye(width, dtype=np.float32)
    out_b = np.zeros(text_width, np.float32)
    out_b[:width] = -b
    return {"mm.0.weight": np.eye(width, dtype=np.float32), "mm.0.bias": b, "mm.2.weight": out_w, "mm.2.bias": out_b}


def _keys(r: GGUFReader, w: GGUFWriter) -> None:
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # written by the writer itself
        vtype = f.types[0]
        w.add_key_value(name, f.contents(), vtype, f.types[-1] if vtype == GGUFValueType.ARRAY else None)


def restore_f32(src: Path, dst: Path, replace: dict[str, np.ndarray]) -> None:
    """Copy src to dst, each tensor's bytes as they are, except those in `replace`, written as the given f32."""
    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents())
    _keys(r, w)
    data = []
    for t in r.tensors:
        if t.name in replace:
            a = np.ascontiguousarray(replace[t.name], np.float32)
            w.add_tensor_info(t.name, a.shape, a.dtype, a.nbytes)
        else:
            a = np.asarray(t.data).view(np.uint8).reshape(-1)  # the stored bytes, whatever the type
            shape = tuple(int(n) for n in reversed(t.shape))  # element shape, PyTorch order
            w.add_tensor_info(t.name, shape, np.dtype(np.float32), a.nbytes, raw_dtype=GGMLQuantizationType(
                t.tensor_type))
        data.append(a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for a in data:
        w.write_tensor_data(a)
    w.close()
