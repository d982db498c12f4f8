"""The exact tensor set of a moondream text model and mmproj: every name, its shape (from the file's own dimensions)
and the types llama.cpp can compute with in its place. llama.cpp checks the text model's shapes itself, but mtmd
takes the mmproj's tensors as they come (a wrong shape, an extra `v.class_embd`, a quantized norm abort the process
at the first image), and ggml aborts on a norm or bias that is not f32 (its adds take f32 only).
"""
from __future__ import annotations

from typing import Mapping

from gguf import GGMLQuantizationType as Q

from .errors import ModelFileError
from .gguf_header import TensorEntry

F32 = frozenset({Q.F32})
FLOAT = frozenset({Q.F32, Q.F16})  # the patch kernel (im2col) and the position embedding (get_rows then add)
# matrices: the types ggml's CPU matmul and get_rows compute with, and gguf-py dequantizes (token rows, runtime)
MATRIX = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K,
                    Q.Q6_K, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ3_XXS, Q.IQ1_S, Q.IQ4_NL, Q.IQ3_S, Q.IQ2_S, Q.IQ4_XS, Q.IQ1_M,
                    Q.TQ1_0, Q.TQ2_0, Q.MXFP4})

Table = dict  # tensor name -> (PyTorch-order shape, allowed types)


def _linear(out: dict, name: str, rows: int, cols: int) -> None:
    out[f"{name}.weight"] = ((rows, cols), MATRIX)
    out[f"{name}.bias"] = ((rows,), F32)


def _norm(out: dict, name: str, width: int) -> None:
    out[f"{name}.weight"] = ((width,), F32)
    out[f"{name}.bias"] = ((width,), F32)


def text_table(names, *, n_embd: int, n_ff: int, n_vocab: int, n_layer: int) -> Table:
    """phi2 (llama.cpp's src/models/phi2.cpp): attention as one fused qkv or as q, k and v, as each block has it."""
    out = {"token_embd.weight": ((n_vocab, n_embd), MATRIX)}
    _norm(out, "output_norm", n_embd)
    _linear(out, "output", n_vocab, n_embd)
    for i in range(n_layer):
        b = f"blk.{i}."
        _norm(out, b + "attn_norm", n_embd)
        if b + "attn_qkv.weight" in names:
            _linear(out, b + "attn_qkv", 3 * n_embd, n_embd)
        else:
            for part in ("attn_q", "attn_k", "attn_v"):
                _linear(out, b + part, n_embd, n_embd)
        _linear(out, b + "attn_output", n_embd, n_embd)
        _linear(out, b + "ffn_up", n_ff, n_embd)
        _linear(out, b + "ffn_down", n_embd, n_ff)
    return out


def mmproj_table(*, n_embd: int, n_ff: int, n_layer: int, patch: int, n_patches: int, hidden: int,
                 out_width: int) -> Table:
    """The "mlp" projector's SigLIP tower (docs/architecture.md §6.3): clip's legacy MLP names, ffn_down = fc1."""
    out = {"v.patch_embd.weight": ((n_embd, 3, patch, patch), FLOAT), "v.patch_embd.bias": ((n_embd,), F32),
           "v.position_embd.weight": ((n_patches, n_embd), FLOAT)}
    _norm(out, "v.post_ln", n_embd)
    _linear(out, "mm.0", hidden, n_embd)
    _linear(out, "mm.2", out_width, hidden)
    for i in range(n_layer):
        b = f"v.blk.{i}."
        _norm(out, b + "ln1", n_embd)
        _norm(out, b + "ln2", n_embd)
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            _linear(out, b + part, n_embd, n_embd)
        _linear(out, b + "ffn_down", n_ff, n_embd)
        _linear(out, b + "ffn_up", n_embd, n_ff)
    return out


def _squeezed(shape: tuple) -> tuple:
    """Without leading 1s: llama.cpp's quantizer drops them ([1, 729, 1152] -> [729, 1152]), ggml ignores them."""
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def check_tensors(path, entries: Mapping[str, TensorEntry], table: Table) -> None:
    """The file holds exactly the table's tensors, each of its shape and of a type allowed in its place."""
    missing = [n for n in table if n not in entries]
    if missing:
        raise ModelFileError(f"{path}: missing tensor(s) {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''};"
                             " the file is incomplete: re-convert it")
    extra = [n for n in entries if n not in table]
    if extra:
        raise ModelFileError(f"{path}: tensor(s) {', '.join(extra[:4])} are not part of a moondream model (llama.cpp "
                             "would change what it computes, or refuse late); re-convert it")
    for name, (shape, types) in table.items():
        entry = entries[name]
        got = tuple(reversed(entry.ne))
        if _squeezed(got) != _squeezed(shape):
            raise ModelFileError(f"{path}: tensor {name} has shape {got}, expected {shape}; the file is inconsistent")
        if entry.type not in types:
            allowed = ", ".join(sorted(t.name for t in types)) if len(types) < 4 else "a float or quantized matrix type"
            raise ModelFileError(f"{path}: tensor {name} is stored as {entry.type.name}; llama.cpp computes it only "
                                 f"as {allowed}")


def _dim(path, entries: Mapping[str, TensorEntry], name: str, axis: int) -> int:
    """A PyTorch-order dimension of a tensor that sizes others (axis 0: rows, -1: columns)."""
    if name not in entries:
        raise ModelFileError(f"{path}: missing tensor(s) {name}; the file is incomplete: re-convert it")
    ne = list(entries[name].ne) or [0]
    return int(ne[-1] if axis == 0 else ne[0])


def mmproj_table_2025(path, entries: Mapping[str, TensorEntry], *, n_embd: int, n_ff: int, n_layer: int, patch: int,
                      n_patches: int, text_width: int) -> Table:
    """A 2025 mmproj (docs/architecture.md §9): the tower, the pass-through mm.0/mm.2 (f32 only: any other type
    rounds the features), the 2304-wide projector md.proj.* and the region head md.region.*; widths the file does
    not fix elsewhere (projector and region inner widths, feature sizes) come from its own tensors, then every
    tensor is held to them."""
    out = mmproj_table(n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, patch=patch, n_patches=n_patches, hidden=n_embd,
                       out_width=text_width)
    out["mm.0.weight"] = ((n_embd, n_embd), F32)
    out["mm.2.weight"] = ((text_width, n_embd), F32)
    inner = _dim(path, entries, "md.proj.fc1.weight", 0)
    _linear(out, "md.proj.fc1", inner, 2 * n_embd)
    _linear(out, "md.proj.fc2", text_width, inner)
    g = "md.region."
    coord_feat = _dim(path, entries, g + "coord_encoder.weight", -1)
    size_feat = _dim(path, entries, g + "size_encoder.weight", -1)
    r_inner = _dim(path, entries, g + "coord_decoder.fc1.weight", 0)
    coord_out = _dim(path, entries, g + "coord_decoder.fc2.weight", 0)
    size_out = _dim(path, entries, g + "size_decoder.fc2.weight", 0)
    if coord_feat % 2 or size_feat % 2 or size_out % 2 or 0 in (inner, coord_feat, size_feat, r_inner, coord_out):
        raise ModelFileError(f"{path}: region widths {coord_feat}, {size_feat}, {size_out} must be even and "
                             "non-zero; re-convert it")
    out[g + "coord_features"] = ((1, coord_feat // 2), FLOAT)  # Fourier frequencies: cos and sin of each
    out[g + "size_features"] = ((2, size_feat // 2), FLOAT)
    _linear(out, g + "coord_encoder", text_width, coord_feat)
    _linear(out, g + "size_encoder", text_width, size_feat)
    _linear(out, g + "coord_decoder.fc1", r_inner, text_width)
    _linear(out, g + "coord_decoder.fc2", coord_out, r_inner)
    _linear(out, g + "size_decoder.fc1", r_inner, text_width)
    _linear(out, g + "size_decoder.fc2", size_out, r_inner)
    return out
