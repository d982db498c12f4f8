"""Process-level settings llama.cpp does not choose itself, tried on native llama-bench decode (q4_k_m, empty
context), turn about with the plain run: OpenMP threads pinned to cores, and the weights read into anonymous memory
with and without transparent huge pages (glibc's malloc asks for them with glibc.malloc.hugetlb=1) instead of mapped.

    python benchmarks/env_ab.py [--rounds 6]    # writes benchmarks/results/env_ab.json
"""
import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np

from moondream_cpp.bench import _cpu_name, build_models

here = Path(__file__).resolve().parent
VARIANTS = {  # name: (extra environment, extra llama-bench arguments)
    "plain (mapped)": ({}, []),
    "OMP_PROC_BIND=close OMP_PLACES=cores": ({"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}, []),
    "read in (-lm none)": ({}, ["-lm", "none"]),
    "read in, huge pages": ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, ["-lm", "none"]),
}


def decode(tool: Path, text: Path, env: dict, extra: list) -> float:
    cmd = [str(tool), "-m", str(text), "-t", "2", "-fa", "1", "--repack", "0", "-p", "0", "-n", "64", "-r", "3",
           "-o", "json", *extra]
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--work", type=Path, default=here / "work")
    args = ap.parse_args()
    text = build_models(args.work, print)["_paths"][("text", "q4_k_m")]
    tool = here.parent / "build" / "native" / "bin" / "llama-bench"
    runs = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            runs[name].append(decode(tool, text, *VARIANTS[name]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {runs[n][-1]:.2f}" for n in VARIANTS), flush=True)
    base = np.array(runs["plain (mapped)"])
    out = {"command": "python benchmarks/env_ab.py" + (f" --rounds {args.rounds}" if args.rounds != 6 else ""),
           "machine": {"cpu": _cpu_name(), "threads": 2},
           "what": "llama-bench q4_k_m decode tok/s, empty context, 64 tokens x 3 per run; rounds alternate order",
           "variants": {n: {"tok_s": v, "median": round(float(np.median(v)), 2),
                            "paired_ratio_vs_plain": [round(x, 3) for x in np.array(v) / base],
                            "median_ratio": round(float(np.median(np.array(v) / base)), 3)}
                        for n, v in runs.items()}}
    (here / "results" / "env_ab.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({n: v["median_ratio"] for n, v in out["variants"].items()}, indent=2))


if __name__ == "__main__":
    main()
