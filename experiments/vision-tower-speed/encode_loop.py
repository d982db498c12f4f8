"""Encode N random 378x378 crops with one mmproj through mtmd (as the runtime calls it) and print each time: the
process to put under `perf record` (`profile.sh`), or to time one build against another by LLAMA_CPP_LIB_PATH.

    python experiments/vision-tower-speed/encode_loop.py MMPROJ [N] [--threads 2] [--flash -1|0|1] [--save X.npy]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[2]))

CROP, N_PATCHES = 378, 729
TEXT = "/work/bench-work/gguf/moondream-bench-text-q4_k_m.gguf"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mmproj")
    ap.add_argument("n", type=int, nargs="?", default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash", type=int, default=-1, help="mtmd flash_attn_type: -1 auto (the runtime's), 0 off, 1 on")
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--save", help="write the crops' embeddings here (.npy), to compare two builds")
    a = ap.parse_args()
    from moondream_cpp import native_handles
    from moondream_cpp.native_handles import TextModel, VisionContext

    model = TextModel(a.text, n_gpu_layers=0, extra_bufts=False, mmap=True)
    if a.flash == -1:
        vision = VisionContext(a.mmproj, model, use_gpu=False, n_threads=a.threads)
    else:  # VisionContext asks for auto; the same context with flash attention forced on or off
        M = native_handles.mtmd()
        mcp = M.mtmd_context_params_default()
        mcp.use_gpu, mcp.n_threads, mcp.print_timings, mcp.warmup = False, a.threads, False, False
        mcp.flash_attn_type = a.flash
        vision = VisionContext.__new__(VisionContext)
        vision.M, vision.n_embd = M, model.n_embd
        vision._own(M.mtmd_init_from_file(a.mmproj.encode(), model.ptr, mcp), M.mtmd_free, model)
    rng = np.random.default_rng(0)
    times, outs = [], []
    for _ in range(a.n):
        px = rng.integers(0, 256, (CROP, CROP, 3), dtype=np.uint8)
        t = time.perf_counter()
        out = vision.encode(px, N_PATCHES)
        times.append(round(time.perf_counter() - t, 3))
        outs.append(out)
    if a.save:
        np.save(a.save, np.stack(outs))
    print(json.dumps({"encode_s": times, "check": float(np.abs(outs[-1]).mean())}))


if __name__ == "__main__":
    main()
