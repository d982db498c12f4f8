"""Our Python path against native llama-bench on the same GGUF and settings, interleaved round by round so that the
shared machine's drift hits both alike: decode of 32 tokens after the 770-position image prompt, and prefill of that
prompt. Prints JSON and writes benchmarks/results/python_vs_native.json.

    bash scripts/build_native.sh && python benchmarks/python_vs_native.py [--rounds 7] [--type q4_k_m] [--match-ctx]

--match-ctx sizes our context as llama-bench sizes its own (the prompt + 32 tokens, not our default 2048) and writes
benchmarks/results/python_vs_native_match_ctx.json instead.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Describe this image."


def native(exe: Path, text: Path, threads: int, args: list[str]) -> float:
    from moondream_cpp.bench import llama_bench_settings

    cmd = [str(exe), "-m", str(text), "-t", str(threads), "-r", "1", *llama_bench_settings(text), "-o", "json", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=True)
    return json.loads(p.stdout)[0]["avg_ts"]


def main():
    from moondream_cpp import Moondream
    from moondream_cpp.bench import bench_image, build_models
    from moondream_cpp.runtime import default_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--type", default="q4_k_m")
    ap.add_argument("--tools", type=Path, default=ROOT / "build" / "native" / "bin")
    ap.add_argument("--match-ctx", action="store_true",
                    help="our context sized as llama-bench sizes its own (prompt + 32), not our default 2048")
    a = ap.parse_args()
    exe = a.tools / "llama-bench"
    if not exe.exists():
        sys.exit(f"{exe} is not built: run bash scripts/build_native.sh first")
    paths = build_models(a.work, lambda s: print(s, file=sys.stderr))["_paths"]
    threads = default_threads()
    md = Moondream.load(paths[("text", a.type)], paths[("mmproj", "q8_0")], n_threads=threads)
    enc = md.encode_image(bench_image(a.work))
    first = md.query(enc, QUESTION, max_tokens=2)
    depth = first.timings["prompt_tokens"]
    if a.match_ctx:  # llama-bench's context is n_prompt + n_gen (+ depth): the same here, for the same settings
        md.close()
        md = Moondream.load(paths[("text", a.type)], paths[("mmproj", "q8_0")], n_threads=threads, n_ctx=depth + 32)
        enc = md.encode_image(bench_image(a.work))
    rows = []
    for r in range(a.rounds):
        md.clear_image_cache()  # drops the saved prefix states: the next query prefills the whole prompt again
        md._kv.clear()
        md._L.llama_memory_clear(md._mem, True)
        ours = md.query(enc, QUESTION, max_tokens=32)  # prefill of `depth` positions, then 32 tokens after them
        row = {"ours_prefill_tok_s": ours.timings["prompt_per_second"],
               "ours_decode_tok_s": ours.timings["generation_per_second"],
               "native_prefill_tok_s": native(exe, paths[("text", a.type)], threads, ["-p", str(depth), "-n", "0"]),
               "native_decode_tok_s": native(exe, paths[("text", a.type)], threads,
                                             ["-p", "0", "-n", "32", "-d", str(depth)])}
        rows.append(row)
        print(f"round {r + 1}: {row}", file=sys.stderr)
    med = {k: round(statistics.median(x[k] for x in rows), 2) for k in rows[0]}
    ratios = [x["ours_decode_tok_s"] / x["native_decode_tok_s"] for x in rows]
    pre = [x["ours_prefill_tok_s"] / x["native_prefill_tok_s"] for x in rows]
    cmd = "python benchmarks/python_vs_native.py" + (f" --rounds {a.rounds}" if a.rounds != 7 else "")
    cmd += " --match-ctx" if a.match_ctx else ""
    out = {"command": cmd, "type": a.type, "threads": threads, "depth": depth, "n_ctx": md.n_ctx, "medians": med,
           "decode_ratio_median": round(statistics.median(ratios), 3),
           "prefill_ratio_median": round(statistics.median(pre), 3), "rounds": rows}
    print(json.dumps(out, indent=1))
    name = "python_vs_native_match_ctx.json" if a.match_ctx else "python_vs_native.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
