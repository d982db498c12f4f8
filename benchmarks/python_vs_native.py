"""Our Python path against native llama-bench on the same GGUF and settings, interleaved round by round
(moondream_cpp/bench/versus_native.py says how). Prints JSON and writes benchmarks/results/python_vs_native.json.

    bash scripts/build_native.sh && python benchmarks/python_vs_native.py [--rounds 7] [--reps 3] [--type q4_k_m]
        [--match-ctx]

Each round runs each side --reps times and compares their fastest runs (versus_native.py says why).

--match-ctx sizes our context as llama-bench sizes its own (the prompt + 32 tokens, not our default 2048) and writes
benchmarks/results/python_vs_native_match_ctx.json instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    from moondream_cpp.bench import bench_image, build_models
    from moondream_cpp.bench.versus_native import REPS, interleaved
    from moondream_cpp.runtime import default_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=REPS,
                    help="runs a side per round; a round compares the fastest of each")
    ap.add_argument("--type", default="q4_k_m")
    ap.add_argument("--tools", type=Path, default=ROOT / "build" / "native" / "bin")
    ap.add_argument("--match-ctx", action="store_true",
                    help="our context sized as llama-bench sizes its own (prompt + 32), not our default 2048")
    a = ap.parse_args()
    exe = a.tools / "llama-bench"
    if not exe.exists():
        sys.exit(f"{exe} is not built: run bash scripts/build_native.sh first")
    paths = build_models(a.work, lambda s: print(s, file=sys.stderr))["_paths"]
    res = interleaved(exe, paths[("text", a.type)], paths[("mmproj", "q8_0")], bench_image(a.work), default_threads(),
                      a.rounds, a.match_ctx, log=lambda s: print(s, file=sys.stderr), reps=a.reps)
    cmd = "python benchmarks/python_vs_native.py" + (f" --rounds {a.rounds}" if a.rounds != 7 else "")
    cmd += f" --reps {a.reps}" if a.reps != REPS else ""
    cmd += " --match-ctx" if a.match_ctx else ""
    out = {"command": cmd, "type": a.type, **res}
    print(json.dumps(out, indent=1))
    name = "python_vs_native_match_ctx.json" if a.match_ctx else "python_vs_native.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
