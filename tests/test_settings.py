"""Runtime settings: the --low-ram preset (q8_0 KV cache, no repacked copies, vision tower on demand) answers as the
default settings do, within the KV quantisation's error; bad settings are refused before llama.cpp sees them."""
from dataclasses import replace

import pytest

from conftest import rel_logits
from moondream_cpp import Moondream, MoondreamError
from moondream_cpp.settings import LOW_RAM


def test_low_ram_matches_the_default(converted, photo, reference):
    text, mmproj = converted("2024-04-02", "f32", "f32")
    want = reference("2024-04-02").logits(photo, "What is in the image?")
    with Moondream.load(text, mmproj, low_ram=True) as md:
        assert md.settings.kv_type == "q8_0" and md.n_ctx == 1024 and md.vision.is_open  # opened at load
        got = md.logits(photo, "What is in the image?")
        assert not md.vision.is_open  # the vision tower was loaded for the image and freed again
        assert rel_logits(got[: len(want)], want) < 3e-2
        low = md.query(photo, "What is in the image?", max_tokens=6).tokens
        md.query(photo, "Again?", max_tokens=2)  # a second image-free question needs no vision tower
    with Moondream.load(text, mmproj) as md:
        assert md.query(photo, "What is in the image?", max_tokens=6).tokens == low


def test_bad_settings_are_refused():
    with pytest.raises(MoondreamError, match="KV cache type"):
        LOW_RAM.with_(kv_type="q2")
    with pytest.raises(TypeError, match="unknown setting"):
        LOW_RAM.with_(n_ctxx=5)
    with pytest.raises(MoondreamError, match="n_gpu_layers"):
        LOW_RAM.with_(n_gpu_layers=-1)


def test_automatic_settings_follow_the_machine(monkeypatch):
    from moondream_cpp import native, settings
    from moondream_cpp.settings import DEFAULT, Settings

    info = native.llama().llama_print_system_info().decode()
    cfg = DEFAULT.for_machine()
    # AMX kernels where this build is ours (the GCC 12 fix) and the CPU has them; then no mapping beside their copy
    assert cfg.extra_bufts == ("AMX_INT8 = 1" in info and settings.AMX_FIX in native.our_patches())
    assert cfg.mmap == (not cfg.extra_bufts)
    assert DEFAULT.for_machine("F16").extra_bufts is False  # no AMX kernels for float weights: keep the lean path
    assert DEFAULT.for_machine("Q4_K").extra_bufts == cfg.extra_bufts
    assert Settings(extra_bufts=True).for_machine().mmap is False
    fixed = Settings(extra_bufts=False, mmap=False, n_gpu_layers=0)
    assert fixed.for_machine() == fixed
    assert replace(LOW_RAM.for_machine(), n_gpu_layers=None) == LOW_RAM  # the preset decides all but the GPU
    # every layer on the GPU where the build has a GPU backend (as llama.cpp's tools do), none elsewhere
    gpu = bool(native.llama().llama_supports_gpu_offload())
    assert cfg.n_gpu_layers == (settings.ALL_LAYERS if gpu else 0)
    assert Settings(n_gpu_layers=3).for_machine().n_gpu_layers == 3
    monkeypatch.setattr(settings, "has_gpu", lambda: True)
    assert DEFAULT.for_machine().n_gpu_layers == settings.ALL_LAYERS
    assert Settings(n_gpu_layers=0).for_machine().n_gpu_layers == 0
    # a registry llama-cpp-python (no patches) never gets AMX: its GCC 12 builds fault in the first AMX matmul
    monkeypatch.setattr(native, "our_patches", lambda: [])
    assert settings.has_amx() is False and DEFAULT.for_machine().extra_bufts is False


def test_backends_are_read_from_the_system_info():
    from moondream_cpp.settings import backends

    # what llama_print_system_info() printed for our CUDA build on a machine without a driver, and for the CPU build
    cuda = ("CUDA : ARCHS = 900 | NO_VMM = 1 | USE_GRAPHS = 1 | FA_QUANTS = q4_0-q4_0,q8_0-q8_0,f16-f16,bf16-bf16 | "
            "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
            "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
    cpu = cuda[cuda.index("CPU :"):]
    assert backends(cuda) == ["CUDA", "CPU"]
    assert backends(cpu) == ["CPU"]
