"""Runtime settings of a loaded model (threads, batches, KV cache, caches) and the --low-ram preset, in one place.

Defaults are what measured fastest on CPU (benchmarks/, docs/performance.md); the preset trades a little speed for
memory."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace

from .errors import MoondreamError

from gguf import GGMLQuantizationType as Q

KV_TYPES = {"f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}  # name -> ggml_type


def default_threads() -> int:
    """Every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    n_threads: int | None = None  # None: every core this process may use
    n_ctx: int = 2048
    n_batch: int = 1024
    n_ubatch: int = 512
    # text-model layers on the GPU. None: all of them where llama.cpp was built with a GPU backend (CUDA, Metal,
    # Vulkan...), none elsewhere; 0 keeps everything on the CPU
    n_gpu_layers: int | None = None
    mmproj_gpu: bool = True  # run the vision tower on the GPU when the text model is offloaded
    # text model: on, prefill +12%, decode +2%, peak -67 MB at q4_k_m
    # (benchmarks/results/amd-epyc-2c/settings_sweep.json)
    flash_attn: bool = True
    kv_type: str = "f16"  # f16, q8_0 or q4_0 (a quantized V cache needs flash attention: switched on with it)
    # llama.cpp's extra weight layouts (AMX, repacked q4_K...). None: on where the CPU has AMX (llama-bench q4_k_m on
    # a 2-core Xeon: decode 1.27x, prefill the same, a 20-token prompt 1.75x: intel-xeon-2c/native_settings.json), off
    # elsewhere (on an AVX-512 EPYC the repacked kernels made prefill 1.3-1.7x slower: amd-epyc-2c/native_settings.json)
    extra_bufts: bool | None = None
    # map the text GGUF; off reads it into memory once. None: off when extra_bufts is on, where the weights live in
    # their own copy and a mapping would only add a second one while loading.
    mmap: bool | None = None
    image_cache_mb: float = 128  # recently encoded images (embeddings)
    state_cache_mb: float = 512  # KV states of recent image prefixes
    # load the vision tower for each new image and free it after, so that it and the text weights are never resident
    # together (+0.35 s per new image on a full-size q8_0 mmproj here, -0.6 GB peak; docs/performance.md)
    mmproj_on_demand: bool = True
    keep_vision_in_batches: bool = True  # ...but keep it loaded through a batch, where images come back to back
    # 2025 models: at most this many local crops per image (None: the model's own, at most 12). Each crop is one
    # vision-tower pass, so fewer is faster on slow machines, and reads the image in less detail than the reference
    max_crops: int | None = None
    # sequences decoded together (moondream_cpp/parallel.py): each has its own KV cache of n_ctx positions, so the
    # KV memory is n_parallel times one sequence's
    n_parallel: int = 1

    def __post_init__(self):
        if self.kv_type not in KV_TYPES:
            raise MoondreamError(f"KV cache type must be one of {', '.join(KV_TYPES)}, not {self.kv_type!r}")
        if self.n_threads is not None and self.n_threads < 1:
            raise MoondreamError("n_threads must be at least 1")
        if self.n_gpu_layers is not None and self.n_gpu_layers < 0:
            raise MoondreamError("n_gpu_layers must be 0 (CPU only) or more; leave it unset for all layers on the GPU")
        if not isinstance(self.n_parallel, int) or not 1 <= self.n_parallel <= MAX_PARALLEL:
            raise MoondreamError(f"parallel sequences must be a whole number from 1 to {MAX_PARALLEL}, "
                                 f"not {self.n_parallel!r}")
        if self.max_crops is not None:
            from .crops import check_max_crops

            check_max_crops(self.max_crops)

    def for_machine(self, weight_type: str | None = None) -> "Settings":
        """These settings with every `None` (automatic) field decided for this machine and llama.cpp build, and for
        the text model's weight type (e.g. "Q4_K"; AMX has kernels for quantized types only)."""
        quantized = weight_type is None or weight_type.upper() not in ("F32", "F16", "BF16")
        extra = (has_amx() and quantized) if self.extra_bufts is None else self.extra_bufts
        gpu = (ALL_LAYERS if has_gpu() else 0) if self.n_gpu_layers is None else self.n_gpu_layers
        return replace(self, extra_bufts=extra, mmap=(not extra) if self.mmap is None else self.mmap,
                       n_gpu_layers=gpu)

    def with_(self, **kw) -> "Settings":
        known = {f.name for f in fields(self)}
        bad = set(kw) - known
        if bad:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(bad))}")
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def kv_cache_bytes(n_layer: int, n_embd: int, positions: int, kv_type: str) -> int:
    """K and V of every layer for `positions` KV cells of `kv_type` (f16: 2 bytes a value; q8_0: 34 per 32)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(KV_TYPES[kv_type])]
    return int(2 * n_layer * n_embd * positions * block_bytes / block)


MAX_PARALLEL = 64  # llama.cpp's own limit on sequences (LLAMA_MAX_SEQ) is 256; beyond this memory runs out first
ALL_LAYERS = 999  # llama.cpp clamps a layer count to the model's (24 + the output layer for moondream)


def has_gpu() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU (built with CUDA, Metal, Vulkan... and one found)."""
    from .native import llama

    return bool(llama().llama_supports_gpu_offload())


NOT_GPU_BACKENDS = {"CPU", "BLAS", "RPC"}


def backends(system_info: str) -> list[str]:
    """The backends a llama.cpp build carries, by name, from its system info ("CUDA : ARCHS = 900 | ... | CPU : SSE3 =
    1 | ..."): a backend is listed whether or not it found a device."""
    return re.findall(r"(?:^|\| )(\w+) : ", system_info)


def gpu_backends() -> list[str]:
    """The GPU backends this llama.cpp build was compiled with (CUDA, Metal, Vulkan...), usable here or not."""
    from .native import llama

    return [b for b in backends(llama().llama_print_system_info().decode()) if b not in NOT_GPU_BACKENDS]


def why_no_gpu() -> str | None:
    """Why layers cannot go to a GPU here (llama.cpp would quietly keep them on the CPU), or None if they can."""
    if has_gpu():
        return None
    built = gpu_backends()
    if built:
        return (f"this llama.cpp build has {', '.join(built)} but found no usable GPU (is its driver installed and "
                "the GPU visible? For CUDA, `nvidia-smi` tells)")
    return ("this llama.cpp build has no GPU backend (reinstall with e.g. CMAKE_ARGS=\"-DGGML_CUDA=on\" bash "
            "scripts/install.sh)")


AMX_FIX = "0003-amx-tile-config-survives-gcc-12.patch"  # without it, GCC <= 12 builds of AMX segfault


def has_amx() -> bool:
    """Whether this llama.cpp build runs Intel AMX kernels here (built in, the CPU has them) and is ours, with the
    AMX fix: a stock GCC 12 build also reports AMX, and faults in its first AMX matmul (llama.cpp #20824)."""
    from .native import llama, our_patches

    return AMX_FIX in our_patches() and "AMX_INT8 = 1" in llama().llama_print_system_info().decode()


DEFAULT = Settings()
# Little memory: a smaller q8_0 KV cache, no repacked weight copies, no prefix states, the vision tower only while
# an image is encoded (docs/performance.md has its measured peak RSS).
LOW_RAM = Settings(n_ctx=1024, n_batch=512, n_ubatch=256, flash_attn=True, kv_type="q8_0", extra_bufts=False,
                   mmap=True, image_cache_mb=16, state_cache_mb=0, mmproj_on_demand=True, keep_vision_in_batches=False)
