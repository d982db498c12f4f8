"""Pad the vision MLP of an mmproj GGUF written by someone else (the published moondream2 one is 4304 wide) the way
our converter writes it (spec.padded_ff), so llama.cpp can quantize fc2 to q8_0 and keep it on its fast kernels."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from moondream_cpp import spec

from .gguf_out import OutTensor, write_gguf

FF_KEY = "clip.vision.feed_forward_length"
_MLP = re.compile(r"v\.blk\.\d+\.ffn_(up|down)\.(weight|bias)$")
# the types the rewrite can pad; a quantized mmproj is left as it is
_FLOATS = {GGMLQuantizationType.F16, GGMLQuantizationType.F32}


def _keys(r: GGUFReader, width: int) -> list[tuple]:
    out = []
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # written by the writer itself
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        out.append((name, width if name == FF_KEY else f.contents(), vtype, sub))
    return out


def with_padded_mlp(t: OutTensor, n_ff: int) -> OutTensor:
    """t itself, or, for a vision MLP tensor (fc1 rows and bias, fc2 columns), t with its n_ff-long axis padded with
    zeros to spec.padded_ff(n_ff). The one padding rule: our converter and the GGUF rewrite below both use it."""
    width = spec.padded_ff(n_ff)
    if width == n_ff or not _MLP.match(t.name) or n_ff not in t.shape:
        return t
    pad = [(0, width - n_ff) if n == n_ff else (0, 0) for n in t.shape]
    return OutTensor(t.name, tuple(n + p for n, (_, p) in zip(t.shape, pad)), t.dtype,
                     lambda load=t.load: np.pad(load(), pad))


def pad_vision_mlp(src: Path, dst: Path, on_start: Callable[[], None] | None = None) -> bool:
    """Write src to dst with the vision MLP zero-padded (fc1 rows and biases, fc2 columns: the same outputs, as
    GELU(0) = 0). False, and nothing written, when there is nothing to pad or its tensors are not f16/f32."""
    r = GGUFReader(src)
    field = r.fields.get(FF_KEY)
    if field is None:
        return False
    n_ff = int(field.contents())
    width = spec.padded_ff(n_ff)
    if width == n_ff or any(t.tensor_type not in _FLOATS for t in r.tensors):
        return False
    if on_start:
        on_start()
    arch = r.fields["general.architecture"].contents()
    tensors = [with_padded_mlp(OutTensor(t.name, tuple(t.data.shape), t.data.dtype.type,  # numpy order
                                         lambda d=t.data: np.asarray(d, np.float32)), n_ff) for t in r.tensors]
    write_gguf(dst, arch, _keys(r, width), tensors)
    return True
