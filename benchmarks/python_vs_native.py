"""Our Python path against native llama.cpp on the same GGUF and settings (moondream_cpp/bench/versus_native.py says
how). Prints JSON and writes benchmarks/results/python_vs_native[-bench][_match_ctx].json.

    bash scripts/build_native.sh && python benchmarks/python_vs_native.py [--pairs 20] [--decode-pairs 80]  # server
    python benchmarks/python_vs_native.py --against bench [--rounds 7] [--reps 3] [--match-ctx]  # against llama-bench

--match-ctx (llama-bench only) sizes our context as llama-bench sizes its own (the prompt + 32 tokens, not our
default 2048).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    from moondream_cpp.bench import bench_image, build_models
    from moondream_cpp.bench.versus_native import DECODE_PAIRS, PAIRS, REPS, interleaved, lockstep
    from moondream_cpp.runtime import default_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--against", choices=["server", "bench"], default="server",
                    help="llama-server, turn about request by request (default), or llama-bench in rounds")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    ap.add_argument("--pairs", type=int, default=PAIRS, help="llama-server: turns a side with a fresh prefill")
    ap.add_argument("--decode-pairs", type=int, default=DECODE_PAIRS,
                    help="llama-server: then turns a side with the prompt cached (decode only)")
    ap.add_argument("--rounds", type=int, default=7, help="llama-bench: rounds")
    ap.add_argument("--reps", type=int, default=REPS,
                    help="llama-bench: runs a side per round; a round compares the fastest of each")
    ap.add_argument("--type", default="q4_k_m")
    ap.add_argument("--tools", type=Path, default=ROOT / "build" / "native" / "bin")
    ap.add_argument("--match-ctx", action="store_true",
                    help="llama-bench: our context sized as llama-bench sizes its own (prompt + 32), not 2048")
    a = ap.parse_args()
    exe = a.tools / ("llama-server" if a.against == "server" else "llama-bench")
    if not exe.exists():
        sys.exit(f"{exe} is not built: run bash scripts/build_native.sh first")
    paths = build_models(a.work, lambda s: print(s, file=sys.stderr))["_paths"]
    text, mmproj, image = paths[("text", a.type)], paths[("mmproj", "q8_0")], bench_image(a.work)

    def log(s):
        print(s, file=sys.stderr, flush=True)
    cmd = "python benchmarks/python_vs_native.py"
    if a.against == "server":
        res = lockstep(exe, text, mmproj, image, default_threads(), a.pairs, a.decode_pairs, log=log)
        cmd += (f" --pairs {a.pairs}" if a.pairs != PAIRS else "") + (
            f" --decode-pairs {a.decode_pairs}" if a.decode_pairs != DECODE_PAIRS else "")
        name = "python_vs_native.json"
    else:
        res = interleaved(exe, text, mmproj, image, default_threads(), a.rounds, a.match_ctx, log=log, reps=a.reps)
        cmd += " --against bench" + (f" --rounds {a.rounds}" if a.rounds != 7 else "")
        cmd += (f" --reps {a.reps}" if a.reps != REPS else "") + (" --match-ctx" if a.match_ctx else "")
        name = "python_vs_native-bench" + ("_match_ctx" if a.match_ctx else "") + ".json"
    out = {"command": cmd, "type": a.type, **res}
    print(json.dumps(out, indent=1))
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
