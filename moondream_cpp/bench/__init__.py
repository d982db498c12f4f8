"""`moondream-cpp bench`: speed and memory of full-size moondream on this machine, measured side by side in one run.

Builds (or reuses) a random-weight full-size moondream1 checkpoint and its GGUF variants through our own converter
(models.py), then measures every variant in fresh processes (measure.py, median of `repeats`), the PyTorch reference
in fp32 and bf16, and llama.cpp's native tools where they are built (native_tools.py, versus_native.py). Also
measures the machine's memory read bandwidth and each variant's decode roofline (memory.py, roofline.py). report.py
writes the results.

`moondream-cpp bench --family 2025` measures the 2025 moondream2 instead (run2025.py: models2025.py builds its files,
measure2025.py measures, report2025.py writes bench2025.json): multi-crop encode by crop count, the cold answer and a
follow-up on a 1024x768 picture against the PyTorch reference in fp32 and bf16, and peak RSS.

By default everything goes under the user's cache (store.home(): $MOONDREAM_CPP_HOME, else
~/.cache/moondream-cpp): the models into bench/work (about 12 GB, reused; 2025: bench/work2025, about 8 GB), the
results into bench/results.
"""
from __future__ import annotations

import platform
import statistics
from pathlib import Path
from typing import Callable

from ..outputs import writable_dir
from .memory import decode_bytes, memory_bandwidth_gbs
from .models import bench_image, build_models
from .native_tools import REPO_TOOLS, native_bench, native_mtmd
from .processes import child, median_of

VARIANTS = [  # (name, text type, mmproj type, extra measure args)
    ("f16", "f16", "f16", []),
    ("q8_0", "q8_0", "q8_0", []),
    ("q5_k_m", "q5_k_m", "q8_0", []),
    ("q4_k_m", "q4_k_m", "q8_0", []),
    ("q4_k_m + bf16 mmproj", "q4_k_m", "bf16", []),
    ("q4_k_m, vision kept loaded", "q4_k_m", "q8_0", ["--settings", '{"mmproj_on_demand": false}']),
    ("q4_k_m --low-ram", "q4_k_m", "q8_0", ["--low-ram"]),
]
ROOFLINE_PAIRS = 24  # decodes, each between two reads of the memory (roofline.py)


def default_dir() -> Path:
    """The bench's own folder in the user's cache: work/ (the models) and results/ below it."""
    from ..store import home

    return home() / "bench"


def default_work_dir() -> Path:
    return default_dir() / "work"


def default_results_dir() -> Path:
    return default_dir() / "results"


def run(work: Path, *, repeats: int = 3, threads: int | None = None, image: Path | None = None,
        with_torch: bool = True, tools: Path | None = None, variants=None,
        log: Callable[[str], None] = lambda s: None) -> dict:
    from ..runtime import default_threads
    from ..settings import DEFAULT, LOW_RAM
    from .models import TEXT_TYPES

    work = writable_dir(work, "--work")
    threads = threads or default_threads()
    image = image or bench_image(work)
    models = build_models(work, log)
    paths = models.pop("_paths")
    res = {"machine": {"cpu": cpu_name(), "threads": threads, "python": platform.python_version(),
                       "llama_cpp": llama_info()},
           "settings": {"repeats": repeats, "tokens": 32, "n_ctx": 2048, "image": str(image)}, "models": models}
    res["variants"] = {}
    bws = []
    for name, tq, mq, extra in variants or VARIANTS:
        log(f"measuring {name} ({repeats} fresh processes, the memory bandwidth before each)")
        args = ["--text", str(paths[("text", tq)]), "--mmproj", str(paths[("mmproj", mq)]), "--image", str(image),
                "--threads", str(threads), *extra]
        runs, bw_runs = [], []
        for _ in range(repeats):  # the shared machine's bandwidth drifts: each variant's roofline from its own minutes
            bw_runs.append(memory_bandwidth_gbs(threads))
            runs.append(child(args))
        bws += bw_runs
        bw = statistics.median(bw_runs)
        m = median_of(runs)
        if "error" not in m:
            ctx = int(m["prefill_tokens"] + m["generated"] / 2)
            kv = (LOW_RAM if "--low-ram" in extra else DEFAULT).kv_type
            per_tok = decode_bytes(paths[("text", tq)], ctx, kv)
            m["read_bandwidth_gbs"] = round(bw, 1)
            m["decode_roofline_tok_s"] = round(bw * 1e9 / per_tok, 2)
            m["decode_vs_roofline"] = round(m["decode_tok_s"] / m["decode_roofline_tok_s"], 3)
            m["followup_ttft_vs_cold"] = round(m["followup_ttft_s"] / m["cold_s"], 4)
        res["variants"][name] = m
    res["decode_roofline_paired"] = {}
    for name, tq, mq, extra in variants or VARIANTS:
        if name in ("q4_k_m", "q4_k_m --low-ram"):
            log(f"decode of {name} against the roofline, {ROOFLINE_PAIRS} pairs in one process")
            res["decode_roofline_paired"][name] = child(
                ["--text", str(paths[("text", tq)]), "--mmproj", str(paths[("mmproj", mq)]), "--image", str(image),
                 "--threads", str(threads), "--pairs", str(ROOFLINE_PAIRS), *extra], module="roofline")
    res["machine"]["read_bandwidth_gbs"] = round(statistics.median(bws), 1) if bws else None
    res["machine"]["read_bandwidth_range_gbs"] = [round(min(bws), 1), round(max(bws), 1)] if bws else None
    if with_torch:
        for dt in ("fp32", "bf16"):
            log(f"measuring the PyTorch reference, {dt}")
            args = ["--engine", "torch", "--checkpoint", str(work / "checkpoint"), "--dtype", dt, "--image",
                    str(image), "--threads", str(threads)]
            res["variants"][f"pytorch {dt}"] = median_of([child(args, timeout=3600) for _ in range(repeats)])
    tools = tools or REPO_TOOLS
    nb = {}
    for tq in TEXT_TYPES:
        n_prompt = int(res["variants"].get("f16", {}).get("prefill_tokens", 752))
        r = native_bench(tools, paths[("text", tq)], threads, n_prompt, 32, repeats)
        if r is not None:
            nb[tq] = r
    res["native_llama_bench"] = nb or None
    if (tools / "llama-server").exists() and ("text", "q4_k_m") in paths:
        from .versus_native import lockstep

        log("our Python path against llama-server, q4_k_m, turn about")
        res["python_vs_native"] = lockstep(tools / "llama-server", paths[("text", "q4_k_m")],
                                           paths[("mmproj", "q8_0")], image, threads, log=log)
    from .measure import QUESTION

    mt = [native_mtmd(tools, paths[("text", "q4_k_m")], paths[("mmproj", "q8_0")], image, QUESTION, threads, 32)
          for _ in range(repeats)]
    res["native_mtmd_cli_q4_k_m"] = median_of(mt) if mt[0] is not None else None
    return res


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def llama_info() -> str:
    try:
        import llama_cpp

        return llama_cpp.llama_print_system_info().decode().strip()
    except Exception:  # pragma: no cover - informational only
        return "?"
