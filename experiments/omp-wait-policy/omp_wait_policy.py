"""How llama.cpp's OpenMP threads wait between graph nodes, and what it costs decode: llama-bench q4_k_m decode of 32
tokens at the image prompt's depth on our settings, with OMP_WAIT_POLICY unset (libgomp spins a while, then sleeps),
ACTIVE (spins) and PASSIVE (sleeps at once), turn about, the order reversed every round. Each side keeps its fastest
of 3 runs a round; the ratios are paired by round. Evidence for leaving the policy alone. Prints JSON and writes
<machine>.json beside this script.

    bash scripts/build_native.sh && python experiments/omp-wait-policy/omp_wait_policy.py [--rounds 6]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1]))
from benchmarks.harness import experiment_result, write_json  # noqa: E402

POLICIES = ["default", "ACTIVE", "PASSIVE"]


def main():
    from moondream_cpp.bench import build_models, cpu_name, default_work_dir
    from moondream_cpp.bench.native_tools import REPO_TOOLS, llama_bench_settings
    from moondream_cpp.bench.stats import summary

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=default_work_dir(), help="the models of `moondream-cpp bench`")
    ap.add_argument("--tools", type=Path, default=REPO_TOOLS)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=770)
    a = ap.parse_args()
    exe = a.tools / "llama-bench"
    if not exe.exists():
        sys.exit(f"{exe} is not built: run bash scripts/build_native.sh first")
    text = build_models(a.work, lambda s: print(s, file=sys.stderr))["_paths"][("text", "q4_k_m")]
    cmd = [str(exe), "-m", str(text), "-t", str(a.threads), "-r", "3", *llama_bench_settings(text), "-o", "json",
           "-p", "0", "-n", "32", "-d", str(a.depth)]
    rows = []
    for r in range(a.rounds):
        row = {}
        for policy in POLICIES if r % 2 == 0 else POLICIES[::-1]:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy != "default":
                env["OMP_WAIT_POLICY"] = policy
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            row[policy] = round(max(json.loads(p.stdout)[0]["samples_ts"]), 3)
        rows.append(row)
        print(f"round {r + 1}/{a.rounds}: {row}", file=sys.stderr)
    res = {"cpu": cpu_name(), "threads": a.threads, "depth": a.depth, "command": cmd[1:],
           "decode_vs_default": {p: summary([x[p] / x["default"] for x in rows]) for p in POLICIES[1:]},
           "rows": rows}
    print(json.dumps(res, indent=1))
    write_json(experiment_result(HERE), res)


if __name__ == "__main__":
    main()
