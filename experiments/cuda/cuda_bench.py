"""moondream-cpp on a CUDA GPU, side by side in one run: our Python path (all layers and the vision tower on the GPU,
the default when llama.cpp is built with CUDA), llama.cpp's own llama-bench, llama-mtmd-cli and llama-server built
from the same sources, and the PyTorch reference on the same GPU in bf16 and fp32. Full-size random-weight moondream1
(speed does not depend on the values). Prints and writes one JSON file.

Run by experiments/cuda/cuda_device.sh on a machine with an NVIDIA GPU, after the CUDA build:

    LLAMA_CPP_LIB_PATH=build/cuda/bin MTMD_CPP_LIB=build/cuda/bin \\
        python experiments/cuda/cuda_bench.py --tools build/cuda/bin    # -> <gpu>.json beside it (or --out)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1]))
from benchmarks.harness import slug  # noqa: E402
from moondream_cpp.bench import bench_image, child, default_work_dir, median_of, native_bench, native_mtmd  # noqa: E402
from moondream_cpp.bench.fullsize import write_checkpoint  # noqa: E402
from moondream_cpp.bench.measure import QUESTION  # noqa: E402
from moondream_cpp.bench.memory import decode_bytes  # noqa: E402

VARIANTS = [  # (name, text type, mmproj type, extra measure args)
    ("q4_k_m", "q4_k_m", "q8_0", []),
    ("q4_k_m, vision kept loaded", "q4_k_m", "q8_0", ["--settings", '{"mmproj_on_demand": false}']),
    ("f16", "f16", "f16", []),
    ("q4_k_m --low-ram", "q4_k_m", "q8_0", ["--low-ram"]),
    ("q4_k_m, no layers offloaded", "q4_k_m", "q8_0", ["--settings", '{"n_gpu_layers": 0, "mmproj_gpu": false}']),
]


def models(work: Path, log, quantized: bool = True) -> dict:
    """The checkpoint, its f16 GGUF pair (our converter) and the q4_k_m text / q8_0 mmproj quantizations (these need
    the llama.cpp libraries; the f16 files do not, so they can be made while llama.cpp builds)."""
    from moondream_cpp.convert.quantize import quantize

    ck, out = work / "checkpoint", work / "gguf"
    if not (ck / "model.safetensors").exists():
        log("writing the random full-size checkpoint")
        write_checkpoint(ck)
    files = {("text", "f16"): out / "moondream-bench-text-f16.gguf",
             ("mmproj", "f16"): out / "moondream-bench-mmproj-f16.gguf"}
    if not files[("text", "f16")].exists():
        log("converting to f16")
        subprocess.run([sys.executable, "-m", "moondream_cpp", "convert", str(ck), "-o", str(out), "--name",
                        "moondream-bench"], check=True)
    for kind, q in (("text", "q4_k_m"), ("mmproj", "q8_0")) if quantized else ():
        dst = out / f"moondream-bench-{kind}-{q}.gguf"
        if not dst.exists():
            log(f"quantizing {kind} to {q}")
            quantize(files[(kind, "f16")], dst.with_suffix(".tmp"), q)
            dst.with_suffix(".tmp").replace(dst)
        files[(kind, q)] = dst
    return files


def gpu_info() -> dict:
    q = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem"
    try:
        p = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True)
    except FileNotFoundError:
        return {}
    return dict(zip(q.split(","), (x.strip() for x in p.stdout.strip().split(","))))


def gpu_read_gbs(gib: int = 4, reps: int = 20) -> float | None:
    """The GPU's memory read bandwidth: a sum over `gib` GiB (far past its L2), best of `reps`, CUDA-event timed."""
    import torch

    if not torch.cuda.is_available():
        return None

    x = torch.ones(gib * 2**28, dtype=torch.float32, device="cuda")
    x.sum()
    best = float("inf")
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        x.sum()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) / 1000)
    del x
    torch.cuda.empty_cache()
    return gib * 2**30 / best / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=default_work_dir())
    ap.add_argument("--tools", type=Path, default=Path("build/cuda/bin"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="default: <the GPU's slug>.json beside this script")
    ap.add_argument("--models-only-f16", action="store_true", help="make the checkpoint and f16 GGUF files, stop")
    a = ap.parse_args(argv)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    a.work.mkdir(parents=True, exist_ok=True)
    paths = models(a.work, log, quantized=not a.models_only_f16)
    if a.models_only_f16:
        return
    import os

    threads = os.cpu_count()
    image = bench_image(a.work)
    res = {"machine": {"gpu": gpu_info(), "cpu_threads": threads}, "settings": {"repeats": a.repeats, "tokens": 32}}
    a.out = a.out or HERE / f"{slug(res['machine']['gpu'].get('name', 'gpu'))}.json"

    def save():
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))

    bw = gpu_read_gbs()
    res["machine"]["gpu_read_gbs"] = bw and round(bw, 1)
    res["variants"] = {}
    for name, tq, mq, extra in VARIANTS:
        log(f"ours: {name}")
        args = ["--text", str(paths[("text", tq)]), "--mmproj", str(paths[("mmproj", mq)]), "--image", str(image),
                "--threads", str(threads), *extra]
        m = median_of([child(args, timeout=600) for _ in range(a.repeats)])
        if "error" not in m and "no layers" not in name and bw:
            ctx = int(m["prefill_tokens"] + m["generated"] / 2)
            per_tok = decode_bytes(paths[("text", tq)], ctx, "q8_0" if "low-ram" in name else "f16")
            m["decode_roofline_tok_s"] = round(bw * 1e9 / per_tok, 1)
            m["decode_vs_roofline"] = round(m["decode_tok_s"] / m["decode_roofline_tok_s"], 4)
            m["followup_ttft_vs_cold"] = round(m["followup_ttft_s"] / m["cold_s"], 4)
        res["variants"][name] = m
        save()
    for dt in ("bf16", "fp32"):
        log(f"PyTorch reference on the GPU, {dt}")
        args = ["--engine", "torch", "--checkpoint", str(a.work / "checkpoint"), "--dtype", dt, "--device", "cuda",
                "--image", str(image)]
        res["variants"][f"pytorch {dt} cuda"] = median_of([child(args, timeout=600) for _ in range(a.repeats)])
        save()
    log("llama-bench")
    n_prompt = int(res["variants"]["q4_k_m"].get("prefill_tokens", 752))
    res["native_llama_bench"] = {q: native_bench(a.tools, paths[("text", q)], threads, n_prompt, 32, 5)
                                 for q in ("q4_k_m", "f16")}
    save()
    log("llama-mtmd-cli")
    res["native_mtmd_cli_q4_k_m"] = median_of([native_mtmd(a.tools, paths[("text", "q4_k_m")],
                                                         paths[("mmproj", "q8_0")], image, QUESTION, threads, 32)
                                             for _ in range(a.repeats)])
    save()
    if (a.tools / "llama-server").exists():
        from moondream_cpp.bench.versus_native import lockstep

        log("ours against llama-server, turn about")
        res["python_vs_native"] = lockstep(a.tools / "llama-server", paths[("text", "q4_k_m")],
                                           paths[("mmproj", "q8_0")], image, threads, pairs=20, decode_pairs=40)
        res["python_vs_native"].pop("rows")
        save()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
