"""Our Python path against native llama-bench (bare llama_decode calls) on the same GGUF and settings, in rounds:
llama-bench loads the model for every run, so a round's two sides are tens of seconds apart. In a round each side runs
`reps` times and keeps its fastest run (the shared machine only ever slows a run down); ratios are paired by round.
Superseded by the turn-about comparison with llama-server (moondream_cpp/bench/versus_native.py).

    bash scripts/build_native.sh && python experiments/python-vs-llama-bench/versus_llama_bench.py [--rounds 7]
        [--reps 3] [--match-ctx]     # -> experiments/python-vs-llama-bench/<machine>[-match-ctx].json

--match-ctx sizes our context as llama-bench sizes its own (the prompt + 32 tokens, not our default 2048).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1]))
from benchmarks.harness import experiment_result, write_json  # noqa: E402
from moondream_cpp.bench import bench_image, build_models, default_work_dir  # noqa: E402
from moondream_cpp.bench.native_tools import REPO_TOOLS, llama_bench_settings  # noqa: E402
from moondream_cpp.bench.versus_native import TOKENS, OurPath, paired_result  # noqa: E402

REPS = 3  # llama-bench runs a side per round: a round compares the fastest of each


def native_tok_s(exe: Path, text: Path, threads: int, args: list[str], reps: int = 1) -> list[float]:
    """One llama-bench run (-r reps) on our default settings: the tokens per second of each repetition."""
    cmd = [str(exe), "-m", str(text), "-t", str(threads), "-r", str(reps), *llama_bench_settings(text), "-o", "json",
           *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=True)
    return [float(x) for x in json.loads(p.stdout)[0]["samples_ts"]]


def interleaved(exe: Path, text: Path, mmproj: Path, image: Path, threads: int, rounds: int, match_ctx: bool = False,
                log: Callable[[str], None] = lambda s: None, reps: int = REPS) -> dict:
    """`rounds` rounds of (our query, llama-bench prefill + decode at the same depth), each side `reps` times a
    round, compared best against best. match_ctx: our context sized as llama-bench sizes its own."""
    ours = OurPath(text, mmproj, image, threads)
    if match_ctx:  # llama-bench's context is n_prompt + n_gen (+ depth)
        ours.close()
        ours = OurPath(text, mmproj, image, threads, n_ctx=ours.depth + TOKENS)
    rows = []
    try:
        for r in range(rounds):
            row = {}
            for who in (("ours", "native") if r % 2 == 0 else ("native", "ours")):
                if who == "native":
                    pre = native_tok_s(exe, text, threads, ["-p", str(ours.depth), "-n", "0"], reps)
                    dec = native_tok_s(exe, text, threads, ["-p", "0", "-n", str(TOKENS), "-d", str(ours.depth)],
                                       reps)
                    row.update({"native_prefill": max(pre), "native_decode": max(dec)})
                else:
                    runs = [ours.run() for _ in range(reps)]
                    row.update({"ours_prefill": max(x["prefill"] for x in runs),
                                "ours_decode": max(x["decode"] for x in runs),
                                "ours_python_share": round(statistics.median(x["python_share"] for x in runs), 4)})
            rows.append(row)
            log(f"round {r + 1}/{rounds}: {row}")
        n_ctx = ours.md.n_ctx
    finally:
        ours.close()
    return {**paired_result("llama-bench", threads, ours.depth, rows), "n_ctx": n_ctx, "reps_per_round": reps}


def main():
    from moondream_cpp.runtime import default_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=default_work_dir(), help="the models of `moondream-cpp bench`")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=REPS, help="runs a side per round; a round compares the fastest")
    ap.add_argument("--type", default="q4_k_m")
    ap.add_argument("--tools", type=Path, default=REPO_TOOLS)
    ap.add_argument("--match-ctx", action="store_true",
                    help="our context sized as llama-bench sizes its own (prompt + 32), not 2048")
    a = ap.parse_args()
    exe = a.tools / "llama-bench"
    if not exe.exists():
        sys.exit(f"{exe} is not built: run bash scripts/build_native.sh first")
    paths = build_models(a.work, lambda s: print(s, file=sys.stderr))["_paths"]
    res = interleaved(exe, paths[("text", a.type)], paths[("mmproj", "q8_0")], bench_image(a.work), default_threads(),
                      a.rounds, a.match_ctx, log=lambda s: print(s, file=sys.stderr, flush=True), reps=a.reps)
    cmd = "python experiments/python-vs-llama-bench/versus_llama_bench.py" + (
        f" --rounds {a.rounds}" if a.rounds != 7 else "") + (f" --reps {a.reps}" if a.reps != REPS else "") + (
        " --match-ctx" if a.match_ctx else "")
    write_json(experiment_result(HERE, "match-ctx" if a.match_ctx else ""), {"command": cmd, "type": a.type, **res})


if __name__ == "__main__":
    main()
