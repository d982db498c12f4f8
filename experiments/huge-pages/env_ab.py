"""Process-level settings llama.cpp does not choose itself, tried on native llama-bench decode (q4_k_m, empty
context), turn about with the plain run: OpenMP threads pinned to cores, and the weights read into anonymous memory
with and without transparent huge pages (glibc's malloc asks for them with glibc.malloc.hugetlb=1) instead of mapped.

    bash scripts/build_native.sh && python experiments/huge-pages/env_ab.py [--rounds 6]   # -> <machine>.json beside it
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1]))
from benchmarks.harness import experiment_result, write_json  # noqa: E402
from moondream_cpp.bench import build_models, cpu_name, default_work_dir  # noqa: E402
from moondream_cpp.bench.native_tools import REPO_TOOLS, llama_bench_settings  # noqa: E402
from moondream_cpp.bench.stats import summary  # noqa: E402
from moondream_cpp.runtime import default_threads  # noqa: E402

VARIANTS = {  # name: (extra environment, extra llama-bench arguments)
    "plain (mapped)": ({}, []),
    "OMP_PROC_BIND=close OMP_PLACES=cores": ({"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}, []),
    "read in (-lm none)": ({}, ["-lm", "none"]),
    "read in, huge pages": ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, ["-lm", "none"]),
}


def decode(tool: Path, text: Path, threads: int, env: dict, extra: list) -> float:
    """llama-bench decode of 64 tokens (best of its 3 repeats averaged) on our settings, `extra` replacing theirs."""
    settings = llama_bench_settings(text)
    for flag, value in zip(extra[::2], extra[1::2]):
        settings[settings.index(flag) + 1] = value
    cmd = [str(tool), "-m", str(text), "-t", str(threads), *settings, "-p", "0", "-n", "64", "-r", "3", "-o", "json"]
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--work", type=Path, default=default_work_dir(), help="the models of `moondream-cpp bench`")
    args = ap.parse_args()
    text = build_models(args.work, print)["_paths"][("text", "q4_k_m")]
    tool = REPO_TOOLS / "llama-bench"
    threads = default_threads()
    runs = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            runs[name].append(decode(tool, text, threads, *VARIANTS[name]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {runs[n][-1]:.2f}" for n in VARIANTS), flush=True)
    base = np.array(runs["plain (mapped)"])
    cmd = "python experiments/huge-pages/env_ab.py" + (f" --rounds {args.rounds}" if args.rounds != 6 else "")
    out = {"command": cmd,
           "machine": {"cpu": cpu_name(), "threads": threads},
           "what": "llama-bench q4_k_m decode tok/s, empty context, 64 tokens x 3 per run, our settings "
                   f"({' '.join(llama_bench_settings(text))}); rounds alternate order",
           "variants": {n: {"tok_s": v, "median": round(float(np.median(v)), 2),
                            "paired_ratio_vs_plain": [round(x, 3) for x in np.array(v) / base],
                            "ratio_vs_plain": summary(list(np.array(v) / base))}
                        for n, v in runs.items()}}
    print(json.dumps({n: v["ratio_vs_plain"] for n, v in out["variants"].items()}, indent=2))
    write_json(experiment_result(HERE), out)


if __name__ == "__main__":
    main()
