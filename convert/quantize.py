"""Quantize a GGUF with llama.cpp's own quantizer (text models and, through its dummy clip arch, mmproj files)."""
from __future__ import annotations

from pathlib import Path

from gguf import LlamaFileType as F

from moondream_cpp.errors import MoondreamError

# type name -> llama_ftype (llama.h, mirrored by gguf's LlamaFileType); f32/f16 are written directly by our writer
LLAMA_FTYPES = {"q4_0": F.MOSTLY_Q4_0, "q8_0": F.MOSTLY_Q8_0, "q5_0": F.MOSTLY_Q5_0, "q4_k_m": F.MOSTLY_Q4_K_M,
                "q5_k_m": F.MOSTLY_Q5_K_M, "bf16": F.MOSTLY_BF16}
TEXT_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_k_m", "q4_k_m", "q5_0", "q4_0")
# SigLIP's 1152/4320-wide rows (its MLP padded from 4304) take no K-quant; llama.cpp falls back per tensor
# for the 32-block types
# bf16: CPUs with AVX512-BF16 multiply it natively (ggml's bf16 dot product), twice f16's rate there
MMPROJ_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_0", "q4_0")


def quantize(src: Path, dst: Path, qtype: str, n_threads: int = 0) -> None:
    from moondream_cpp.native import llama  # only quantized conversions need the native library

    llama_cpp = llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[qtype]
    params.nthread = n_threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise MoondreamError(f"llama.cpp could not quantize {src.name} to {qtype} (code {rc})")
