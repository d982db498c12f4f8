"""Concurrent clients against `moondream-cpp serve --parallel N` and native `llama-server -np N`, on the same GGUF
pair and settings, side by side in one run (issue 30's target: at 4 clients our aggregate decode >= 2.5x our 1-client
rate and within 10% of llama-server -np 4), and llama.cpp's own ceiling for batched decode here (llama-batched-bench at
the same depth and settings, no server). Prints JSON and writes benchmarks/results/<machine>/parallel_serving.json.

For each client count N (1, 2, 4, 8) each server is started for N sequences, answers one warm-up request, then N
clients at once each stream a greedy answer of --max-tokens tokens about a picture of its own (no two requests share
an image prefix or hit an image cache). Both servers get the same threads, context per sequence (llama-server's -c is
the total, split across its -np slots), batch sizes, KV type, flash attention, weight layout and mapping (ours:
moondream_cpp/settings.py's defaults for this machine; llama-server: the same values as flags), temperature 0,
llama-server with ignore_eos and top_k 1 (our server has no ignore_eos: its answers are checked to run the full
length). The servers take turns, the first alternating between client counts. Token counts are each server's own
(usage.completion_tokens in its last chunk), times the arrival of the streamed chunks carrying text
(benchmarks/harness/serving.py says how each number is made).

The models: full-size random weights (speed does not depend on their values), built by `moondream-cpp bench` into
its work folder, or alone with
    python -c "from pathlib import Path; from moondream_cpp.bench import build_models; build_models(Path('W'), print)"
which writes W/gguf/moondream-bench-text-q4_k_m.gguf and W/gguf/moondream-bench-mmproj-f16.gguf among others.

    bash scripts/build_native.sh && python benchmarks/parallel_serving.py \\
        --text W/gguf/moondream-bench-text-q4_k_m.gguf --mmproj W/gguf/moondream-bench-mmproj-f16.gguf
    python benchmarks/parallel_serving.py --quick --ours-only --text T --mmproj M --out /tmp/x.json  # a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import benchmark_result, write_json  # noqa: E402
from benchmarks.harness.serving import (chat_body, distinct_image_uri, free_port, launched, run_clients,  # noqa: E402
                                        summarize)

WORK = Path("/work/bench-work/gguf")
TARGET_SPEEDUP, TARGET_NATIVE_SHARE, TARGET_N = 2.5, 0.9, 4


def ours_has_parallel() -> bool:
    """Whether this checkout's `moondream-cpp serve` takes --parallel (without it, it answers one request at a
    time)."""
    p = subprocess.run([sys.executable, "-m", "moondream_cpp", "serve", "--help"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"}, timeout=120)
    if p.returncode != 0:  # a broken checkout must not pass for a server without --parallel
        sys.exit("moondream-cpp serve --help failed: " + (p.stderr.strip().splitlines() or ["?"])[-1])
    return "--parallel" in p.stdout


def ours_cmd(text: Path, mmproj: Path, threads: int, n_ctx: int, n: int, parallel: bool, port: int) -> list[str]:
    return [sys.executable, "-m", "moondream_cpp", "serve", "--text", str(text), "--mmproj", str(mmproj),
            "--port", str(port), "--threads", str(threads), "--n-ctx", str(n_ctx),
            *(["--parallel", str(n)] if parallel and n > 1 else [])]


def llama_cmd(exe: Path, text: Path, mmproj: Path, threads: int, n_ctx: int, n: int, port: int) -> list[str]:
    """llama-server on our defaults for this machine (moondream_cpp/bench/versus_native.py's server_args), with n
    slots of n_ctx positions each (its -c is the total) and the mmproj."""
    from moondream_cpp.bench.versus_native import server_args

    args = server_args(text, threads)
    args[args.index("-c") + 1] = str(n_ctx * n)
    args[args.index("-np") + 1] = str(n)
    return [str(exe), *args, "--mmproj", str(mmproj), "--host", "127.0.0.1", "--port", str(port)]


def native_batched(exe: Path, text: Path, threads: int, n_ctx: int, counts: list[int], depth: int,
                   n_gen: int) -> dict:
    """llama.cpp's own ceiling for batched decode on this machine, no server and no HTTP: llama-batched-bench with
    B sequences each decoding n_gen tokens after `depth` prompt positions (the prompt evaluated once and copied,
    -pps), on the servers' settings. S_TG: tokens per second of the B sequences together."""
    from moondream_cpp.bench.versus_native import server_args

    args = server_args(text, threads)
    for flag in ("-np", "--cache-ram"):  # server-only flags
        del args[args.index(flag):args.index(flag) + 2]
    args[args.index("-c") + 1] = str(max(counts) * n_ctx)
    cmd = [str(exe), *args, "-npp", str(depth), "-ntg", str(n_gen), "-npl", ",".join(map(str, counts)), "-pps"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    rows = []
    for line in p.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            pp, tg, b, n_kv, t_pp, s_pp, t_tg, s_tg = cells[:8]
            rows.append({"B": int(b), "prompt": int(pp), "generated": int(tg), "t_tg_s": float(t_tg),
                         "s_tg_tok_s": float(s_tg), "s_pp_tok_s": float(s_pp)})
    one = next((r["s_tg_tok_s"] for r in rows if r["B"] == 1), None)
    return {"command": " ".join([Path(cmd[0]).name, *cmd[1:]]), "returncode": p.returncode, "rows": rows,
            "s_tg_over_b1": {str(r["B"]): round(r["s_tg_tok_s"] / one, 3) for r in rows} if one else {},
            **({"stderr_tail": p.stderr[-2000:]} if p.returncode else {})}


def measure(server: str, cmd: list[str], port: int, n: int, max_tokens: int, seeds, extra: dict, logs: Path) -> dict:
    """Start the server, warm it with one short request, then N clients at once; the config's numbers."""
    with launched(cmd, port, logs / f"{server}-{n}.log") as url:
        run_clients(url, [chat_body(distinct_image_uri(next(seeds)), 4, extra)])  # weights paged in, first calls
        bodies = [chat_body(distinct_image_uri(next(seeds)), max_tokens, extra) for _ in range(n)]
        records, t0, t1 = run_clients(url, bodies)
    return {"server": server, "clients": n, "command": " ".join(Path(cmd[0]).name if i == 0 else c
                                                                 for i, c in enumerate(cmd)),
            **summarize(records, t0, t1)}


def ratios(rows: list[dict]) -> dict:
    """ours(N)/ours(1) and ours(N)/llama-server(N), for the aggregate and the steady decode rates."""
    by = {(r["server"], r["clients"]): r for r in rows}
    out = {}
    for (server, n), r in sorted(by.items(), key=lambda kv: kv[0][1]):
        if server != "ours":
            continue
        one, native = by.get(("ours", 1)), by.get(("llama-server", n))
        x = {}
        for key in ("aggregate_decode_tok_s", "steady_decode_tok_s", "total_tok_per_wall_s"):
            if one and r.get(key) and one.get(key):
                x[f"{key}_over_ours_1"] = round(r[key] / one[key], 3)
            if native and r.get(key) and native.get(key):
                x[f"{key}_over_llama_server"] = round(r[key] / native[key], 3)
        out[str(n)] = x
    return out


def targets(rows: list[dict], parallel: bool) -> dict:
    """Issue 30's target at 4 clients, on each rate: held, missed, or not measured. The aggregate (per-client
    windows, so it also counts the scheduling of prefills) and the steady rate (batched decode alone)."""
    note = "" if parallel else "our server without --parallel: the 4 requests queue, one at a time"
    out = {}
    for rate in ("aggregate_decode_tok_s", "steady_decode_tok_s"):
        by = {(r["server"], r["clients"]): r.get(rate) for r in rows}
        ours1, ours4, native4 = by.get(("ours", 1)), by.get(("ours", TARGET_N)), by.get(("llama-server", TARGET_N))
        speedup = ours4 / ours1 if ours1 and ours4 else None
        share = ours4 / native4 if ours4 and native4 else None
        name = rate.removesuffix("_decode_tok_s")
        out[f"{name}: ours_{TARGET_N}_over_ours_1_at_least_{TARGET_SPEEDUP}"] = {
            "value": round(speedup, 3) if speedup else None, "met": speedup >= TARGET_SPEEDUP if speedup else None,
            "note": note}
        out[f"{name}: ours_{TARGET_N}_within_10pct_of_llama_server_{TARGET_N}"] = {
            "value": round(share, 3) if share else None, "met": share >= TARGET_NATIVE_SHARE if share else None,
            "note": note}
    return out


def main():
    from moondream_cpp.bench.native_tools import REPO_TOOLS
    from moondream_cpp.gguf_check import check_text
    from moondream_cpp.runtime import default_threads
    from moondream_cpp.settings import DEFAULT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=Path, default=WORK / "moondream-bench-text-q4_k_m.gguf")
    ap.add_argument("--mmproj", type=Path, default=WORK / "moondream-bench-mmproj-f16.gguf")
    ap.add_argument("--clients", default="1,2,4,8", help="client counts, comma-separated")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens each client asks for")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 and 2 clients, 8 tokens each")
    ap.add_argument("--ours-only", action="store_true", help="leave llama-server out")
    ap.add_argument("--tools", type=Path, default=REPO_TOOLS, help="where llama-server is")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--out", type=Path, help="where the JSON goes (default: benchmarks/results/<machine>/)")
    a = ap.parse_args()
    counts = [1, 2] if a.quick else [int(x) for x in a.clients.split(",")]
    max_tokens = 8 if a.quick else a.max_tokens
    exe = a.tools / "llama-server"
    if not a.ours_only and not exe.exists():
        sys.exit(f"{exe} is not built: run bash scripts/build_native.sh first (or pass --ours-only)")
    for f in (a.text, a.mmproj):
        if not f.exists():
            sys.exit(f"{f} is missing: see this script's docstring for how to build the full-size models")
    n_ctx = DEFAULT.for_machine(check_text(a.text).quant).n_ctx
    parallel = ours_has_parallel()
    seeds = iter(range(10**6))
    # llama-server: the same greedy choice without a sampler chain to speak of, and never an early stop
    native_extra = {"ignore_eos": True, "top_k": 1}
    started = datetime.now(timezone.utc)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    root = Path(__file__).resolve().parents[1]
    git = [subprocess.run(["git", *args], capture_output=True, text=True, cwd=root).stdout.strip() for args in
           (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "--", "moondream_cpp", "cli"])]
    rows = []
    with tempfile.TemporaryDirectory() as logs:
        for i, n in enumerate(counts):
            order = ["ours", "llama-server"] if i % 2 == 0 else ["llama-server", "ours"]
            for server in order:
                if server == "llama-server" and a.ours_only:
                    continue
                port = free_port()
                cmd = (ours_cmd(a.text, a.mmproj, a.threads, n_ctx, n, parallel, port) if server == "ours" else
                       llama_cmd(exe, a.text, a.mmproj, a.threads, n_ctx, n, port))
                row = measure(server, cmd, port, n, max_tokens, seeds,
                              native_extra if server == "llama-server" else {}, Path(logs))
                row["parallel"] = n if server == "llama-server" or (parallel and n > 1) else 1
                rows.append(row)
                print(f"{server} x{n}: aggregate decode {row['aggregate_decode_tok_s']} tok/s, steady "
                      f"{row.get('steady_decode_tok_s')}, ttft p50 {row['ttft_p50_s']} s, p95 {row['ttft_p95_s']} "
                      f"s, longest pause {row['longest_pause_s']} s, {row['completion_tokens']} tokens in "
                      f"{row['wall_s']} s",
                      file=sys.stderr, flush=True)
    prompt_tokens = {r["server"]: sorted({c["prompt_tokens"] for c in r["per_client"]}) for r in rows}
    batched = a.tools / "llama-batched-bench"
    ceiling = (None if a.ours_only else
               {"error": f"{batched} is not built (bash scripts/build_native.sh)"} if not batched.exists() else
               native_batched(batched, a.text, a.threads, n_ctx, counts=sorted(set(counts)),
                              depth=max(prompt_tokens["ours"]), n_gen=max_tokens))
    out = {
        "command": "python benchmarks/parallel_serving.py " + " ".join(sys.argv[1:]),
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S"), "uptime_before": uptime,
        # the code measured: a commit, and the server's files changed since (a run during development says so)
        "git_head": git[0], "uncommitted_server_files": git[1].splitlines(),
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "minutes": round((datetime.now(timezone.utc) - started).total_seconds() / 60, 1),
        "text": a.text.name, "mmproj": a.mmproj.name, "threads": a.threads, "n_ctx_per_sequence": n_ctx,
        "max_tokens": max_tokens, "ours_has_parallel": parallel,
        "counting": "tokens: each server's usage.completion_tokens; times: arrival of the stream chunks carrying "
                    "text (steady_decode counts those chunks: chunks_equal_tokens says whether they are tokens)",
        "prompt_tokens_seen": prompt_tokens, "rows": rows, "ratios": ratios(rows), "targets": targets(rows, parallel),
        # what batching can give on this machine at all: llama.cpp's own batched decode, no server
        "native_batched_decode": ceiling}
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    short_answers = [(r["server"], r["clients"]) for r in rows
                     if any(c["completion_tokens"] != max_tokens for c in r["per_client"])]
    if short_answers:
        print(f"note: some answers stopped before {max_tokens} tokens: {short_answers}", file=sys.stderr)
    write_json(a.out or benchmark_result("parallel_serving"), out)


if __name__ == "__main__":
    main()
