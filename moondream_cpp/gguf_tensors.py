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
