"""The SigLIP tower as clip's "mlp" graph reads it (docs/architecture.md §6.3): the patch embedding as a conv kernel,
the last block written twice (P2), q/k/v split from the fused rows (P12), the MLP width padded (P10). The 2024 and
2025 layouts differ only in the checkpoint names, given as tables."""
from __future__ import annotations

import numpy as np

from .gguf_out import OutTensor
from .pad_gguf import with_padded_mlp


def float_type(kind: str, ndim: int):
    """1-D tensors stay f32 (norms, biases); 2-D+ follow the file type."""
    return np.float32 if kind == "f32" or ndim < 2 else np.float16


def plain_tensors(tensors, table: dict, kind: str) -> list[OutTensor]:
    """Checkpoint tensors copied under their GGUF names (`table`: HF name -> GGUF name), read lazily, row by row."""
    out = []
    for hf, gg in table.items():
        shape = tensors.shape(hf)
        out.append(OutTensor(gg, shape, float_type(kind, len(shape)), lambda hf=hf: tensors.get(hf),
                             lambda a, b, hf=hf: tensors.get_rows(hf, a, b)))
    return out


def tower_tensors(tensors, v, tower: dict, blocks: dict, kind: str) -> list[OutTensor]:
    """`tensors`: the checkpoint's (SafetensorsFiles); `v`: its VisionDims; `tower`/`blocks`: HF name -> GGUF name
    (a tuple of three names for a fused qkv)."""
    out = []
    for hf, gg in tower.items():
        shape = tensors.shape(hf)
        load = lambda hf=hf: tensors.get(hf)  # noqa: E731
        dtype = float_type(kind, len(shape))
        if gg == "v.patch_embd.weight":  # [D, 3*p*p] -> conv kernel [D, 3, p, p]
            # the kernel's type is also the type the pixels are unfolded into: f32 keeps pixels exact
            shape = (v.n_embd, 3, v.patch_size, v.patch_size)
            load = lambda hf=hf, s=shape: tensors.get(hf).reshape(s)  # noqa: E731
        out.append(OutTensor(gg, shape, dtype, load))
    # the last block is written twice: mtmd runs block_count-1 blocks for "mlp" projectors (docs/architecture.md P2)
    order = list(range(v.n_layer)) + [v.n_layer - 1]
    for gi, src in enumerate(order):
        for hf_t, gg_t in blocks.items():
            hf = hf_t.format(i=src)
            shape = tensors.shape(hf)
            if isinstance(gg_t, tuple):  # fused qkv rows [q; k; v] -> three tensors
                part = (shape[0] // 3,) + tuple(shape[1:])
                for j, g in enumerate(gg_t):
                    out.append(OutTensor(g.format(i=gi), part, float_type(kind, len(part)),
                                         lambda hf=hf, j=j, n=part[0]: tensors.get(hf)[j * n:(j + 1) * n]))
            else:
                t = OutTensor(gg_t.format(i=gi), shape, float_type(kind, len(shape)),
                              lambda hf=hf: tensors.get(hf), lambda a, b, hf=hf: tensors.get_rows(hf, a, b))
                out.append(with_padded_mlp(t, v.n_ff))
    return out
