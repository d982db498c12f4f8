"""The SigLIP vision tower per 378x378 crop: llama.cpp (mtmd, as the runtime calls it) against PyTorch fp32 and bf16 on
the same full-size weights, each engine in its own long-lived worker process, the engines taking turns crop by crop
(rotated order every round), so each round's ratios are paired measurements at the same moment of the shared machine.

    python benchmarks/vision_tower.py [--rounds 9] [--mmproj f16,bf16,q8_0] [--lib NAME=DIR ...] [--torch fp32,bf16]

Needs the full-size files of `moondream-cpp bench` (its --work: gguf/moondream-bench-{text-q4_k_m,mmproj-*}.gguf and
the HF checkpoint). --lib runs the llama.cpp side on another build of the libraries (a folder holding libllama.so,
libmtmd.so, libggml*.so: LLAMA_CPP_LIB_PATH and MTMD_CPP_LIB), for A/B of llama.cpp changes; "installed" is the
venv's. Prints JSON and writes benchmarks/results/<machine>/vision_tower.json (--out to write elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))

CROP, PATCH = 378, 14
N_PATCHES = (CROP // PATCH) ** 2


# ------------------------------------------------------------------------------------------------ workers
def _llama_worker(mmproj: str, text: str, threads: int):
    import numpy as np

    from moondream_cpp.native_handles import TextModel, VisionContext

    model = TextModel(text, n_gpu_layers=0, extra_bufts=False, mmap=True)
    vision = VisionContext(mmproj, model, use_gpu=False, n_threads=threads)  # as the runtime calls mtmd
    rng = np.random.default_rng(0)

    def encode():
        pixels = rng.integers(0, 256, (CROP, CROP, 3), dtype=np.uint8)
        t, c = time.perf_counter(), time.process_time()
        out = vision.encode(pixels, N_PATCHES)
        return time.perf_counter() - t, time.process_time() - c, float(np.abs(out).mean())
    return encode


def _torch_tower(checkpoint: str, dtype_name: str, threads: int):
    """Upstream-style SigLIP (moondream2 2024's vision encoder, docs/architecture.md §3): linear patch embedding,
    27 pre-LN blocks with scaled_dot_product_attention and tanh GELU, the final LayerNorm."""
    import torch
    import torch.nn.functional as F
    from safetensors import safe_open

    from moondream_cpp import spec

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    V = spec.VISION_PREFIX
    with safe_open(str(Path(checkpoint) / "model.safetensors"), "pt") as f:
        w = {k[len(V):]: f.get_tensor(k).to(dtype) for k in f.keys() if k.startswith(V)}
    n_layer = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    width = w["norm.weight"].shape[0]
    n_head = 16
    hd = width // n_head
    g = CROP // PATCH

    def lin(x, name):
        return F.linear(x, w[name + ".weight"], w[name + ".bias"])

    def ln(x, name):
        return F.layer_norm(x, (width,), w[name + ".weight"], w[name + ".bias"], 1e-6)

    @torch.inference_mode()
    def tower(img):  # img [3, CROP, CROP] in [-1, 1]
        x = img.to(dtype).reshape(3, g, PATCH, g, PATCH).permute(1, 3, 0, 2, 4).reshape(g * g, 3 * PATCH * PATCH)
        x = lin(x, "patch_embed.linear") + w["pos_embed"][0]
        for i in range(n_layer):
            b = f"blocks.{i}."
            q, k, v = lin(ln(x, b + "norm1"), b + "attn.qkv").reshape(-1, 3, n_head, hd).permute(1, 2, 0, 3)
            a = F.scaled_dot_product_attention(q, k, v)
            x = x + lin(a.transpose(0, 1).reshape(-1, width), b + "attn.proj")
            x = x + lin(F.gelu(lin(ln(x, b + "norm2"), b + "mlp.fc1"), approximate="tanh"), b + "mlp.fc2")
        return ln(x, "norm")
    return tower, n_layer


def _torch_worker(checkpoint: str, dtype_name: str, threads: int):
    import torch

    tower, _ = _torch_tower(checkpoint, dtype_name, threads)
    gen = torch.Generator().manual_seed(0)

    def encode():
        img = torch.rand((3, CROP, CROP), generator=gen) * 2 - 1
        t, c = time.perf_counter(), time.process_time()
        out = tower(img)
        return time.perf_counter() - t, time.process_time() - c, float(out.float().abs().mean())
    return encode


def worker(spec_json: str):
    """Load one engine, encode once (warm-up: oneDNN's kernels, mtmd's graph), then one encode per 'run' line."""
    s = json.loads(spec_json)
    if s["engine"] == "llama":
        encode = _llama_worker(s["mmproj"], s["text"], s["threads"])
    else:
        encode = _torch_worker(s["checkpoint"], s["dtype"], s["threads"])
    encode()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        sec, cpu, check = encode()
        print(json.dumps({"s": sec, "cpu_s": cpu, "check": check}), flush=True)


# ------------------------------------------------------------------------------------------------ driver
class Worker:
    def __init__(self, name: str, spec: dict, env: dict):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"worker {name} failed to start ({line!r})")

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mmproj", default="f16,bf16,q8_0", help="mmproj types to time (comma-separated)")
    ap.add_argument("--lib", action="append", default=[], metavar="NAME=DIR",
                    help="a llama.cpp library folder to time (repeatable); default: the installed one")
    ap.add_argument("--torch", default="fp32,bf16", help="PyTorch dtypes to time (comma-separated; empty: none)")
    ap.add_argument("--work", type=Path, default=None, help="the --work of `moondream-cpp bench` (default: its)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker)
    from benchmarks.harness import benchmark_result, write_json
    from moondream_cpp.bench import cpu_name, default_work_dir
    from moondream_cpp.bench.stats import summary
    from moondream_cpp.runtime import default_threads

    threads = a.threads or default_threads()
    work = a.work or default_work_dir()
    text = work / "gguf" / "moondream-bench-text-q4_k_m.gguf"
    libs = dict(x.split("=", 1) for x in a.lib) or {"installed": ""}
    specs = {}
    for lib_name, lib_dir in libs.items():
        env = {"LLAMA_CPP_LIB_PATH": lib_dir, "MTMD_CPP_LIB": lib_dir} if lib_dir else {}
        for t in filter(None, a.mmproj.split(",")):
            mmproj = work / "gguf" / f"moondream-bench-mmproj-{t}.gguf"
            name = f"llama-{t}" + (f"@{lib_name}" if len(libs) > 1 or lib_dir else "")
            specs[name] = ({"engine": "llama", "mmproj": str(mmproj), "text": str(text), "threads": threads}, env)
    for d in filter(None, a.torch.split(",")):
        specs[f"torch-{d}"] = ({"engine": "torch", "checkpoint": str(work / "checkpoint"), "dtype": d,
                                "threads": threads}, {})
    workers = {}
    try:
        for name, (spec, env) in specs.items():  # started one at a time: loading competes for the cores
            workers[name] = Worker(name, spec, env)
            print(f"{name}: ready", file=sys.stderr, flush=True)
        names = list(workers)
        rounds = []
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotated: no engine always first or last
            load = os.getloadavg()[0]
            row = {"load_avg_1m": round(load, 2), "order": order}
            for n in order:
                got = workers[n].run()
                row[n] = round(got["s"], 4)
                row[n + " cpu_s"] = round(got["cpu_s"], 3)  # all threads' CPU time: what a busy machine inflates least
            rounds.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for w in workers.values():
            w.close()

    result = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "machine": cpu_name(),
              "platform": platform.machine(), "threads": threads, "rounds": a.rounds, "crop": CROP,
              "libs": libs, "per_crop_s_median": {n: round(statistics.median(r[n] for r in rounds), 3) for n in names},
              "per_crop_s_range": {n: [min(r[n] for r in rounds), max(r[n] for r in rounds)] for n in names},
              "per_crop_cpu_s_median": {n: round(statistics.median(r[n + " cpu_s"] for r in rounds), 3) for n in names},
              "load_avg_1m": [r["load_avg_1m"] for r in rounds],
              "ratios_paired": {}, "cpu_ratios_paired": {}, "rounds_detail": rounds}
    torch_names = [n for n in names if n.startswith("torch-")]
    for n in names:  # each llama.cpp variant over each PyTorch dtype, round by round: < 1 means llama.cpp is faster
        for base in torch_names:
            if n != base and n.startswith("llama-"):
                result["ratios_paired"][f"{n} / {base}"] = summary([r[n] / r[base] for r in rounds])
                result["cpu_ratios_paired"][f"{n} / {base}"] = summary([r[n + " cpu_s"] / r[base + " cpu_s"]
                                                                        for r in rounds])
    llama_names = [n for n in names if n.startswith("llama-")]
    for i, x in enumerate(llama_names):  # builds against each other, same mmproj type
        for y in llama_names[i + 1:]:
            if x.split("@")[0] == y.split("@")[0]:
                result["ratios_paired"][f"{y} / {x}"] = summary([r[y] / r[x] for r in rounds])
                result["cpu_ratios_paired"][f"{y} / {x}"] = summary([r[y + " cpu_s"] / r[x + " cpu_s"] for r in rounds])
    write_json(a.out or benchmark_result("vision_tower"), result)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds_detail"}, indent=1))


if __name__ == "__main__":
    main()
