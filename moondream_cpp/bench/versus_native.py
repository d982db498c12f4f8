"""Our Python path against native llama-bench on the same GGUF and settings, interleaved round by round so that the
shared machine's drift hits both alike: decode of 32 tokens after the image prompt, and prefill of that prompt.
Rounds alternate which side goes first. Our side also times each llama_decode call it makes, so the share of our
decode time spent in Python (outside llama.cpp) is measured on the same tokens, free of the machine's drift."""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

QUESTION = "Describe this image."


def native_tok_s(exe: Path, text: Path, threads: int, args: list[str]) -> float:
    """One llama-bench run (-r 1) on our default settings: its tokens per second."""
    from . import llama_bench_settings

    cmd = [str(exe), "-m", str(text), "-t", str(threads), "-r", "1", *llama_bench_settings(text), "-o", "json", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=True)
    return json.loads(p.stdout)[0]["avg_ts"]


def interleaved(exe: Path, text: Path, mmproj: Path, image: Path, threads: int, rounds: int, match_ctx: bool = False,
                log: Callable[[str], None] = lambda s: None) -> dict:
    """`rounds` rounds of (our query, llama-bench prefill + decode at the same depth); medians and ranges of the
    ratios, and our Python share of decode. match_ctx: our context sized as llama-bench sizes its own."""
    from .. import Moondream

    md = Moondream.load(text, mmproj, n_threads=threads)
    enc = md.encode_image(image)
    depth = md.query(enc, QUESTION, max_tokens=2).timings["prompt_tokens"]
    if match_ctx:  # llama-bench's context is n_prompt + n_gen (+ depth)
        md.close()
        md = Moondream.load(text, mmproj, n_threads=threads, n_ctx=depth + 32)
        enc = md.encode_image(image)
    calls: list[tuple[int, float]] = []  # (tokens, seconds) of each llama_decode our path makes
    plain_decode = md._decode

    def timed_decode(batch):
        t0 = time.perf_counter()
        plain_decode(batch)
        calls.append((batch.n_tokens, time.perf_counter() - t0))

    md._decode = timed_decode
    rows = []
    for r in range(rounds):
        md.clear_image_cache()  # drops the saved prefix states: the next query prefills the whole prompt again
        md._kv.clear()
        md._L.llama_memory_clear(md._mem, True)
        row = {}
        for who in (("ours", "native") if r % 2 == 0 else ("native", "ours")):
            if who == "native":
                row["native_prefill_tok_s"] = native_tok_s(exe, text, threads, ["-p", str(depth), "-n", "0"])
                row["native_decode_tok_s"] = native_tok_s(exe, text, threads,
                                                          ["-p", "0", "-n", "32", "-d", str(depth)])
                continue
            calls.clear()
            ours = md.query(enc, QUESTION, max_tokens=32)  # prefill of `depth` positions, then 32 tokens after them
            n = ours.timings["generated_tokens"]
            steps = [sec for k, sec in calls if k == 1][-n:]  # the answer's one-token decodes
            gen_s = ours.timings["generation_ms"] / 1000
            row.update({"ours_prefill_tok_s": ours.timings["prompt_per_second"],
                        "ours_decode_tok_s": ours.timings["generation_per_second"],
                        "ours_in_llama_decode_tok_s": round(len(steps) / sum(steps), 2),
                        "ours_python_share": round(1 - sum(steps) / gen_s, 4)})
        rows.append(row)
        log(f"round {r + 1}: {row}")
    n_ctx = md.n_ctx
    md.close()
    med = {k: round(statistics.median(x[k] for x in rows), 4) for k in rows[0]}
    dec = [x["ours_decode_tok_s"] / x["native_decode_tok_s"] for x in rows]
    pre = [x["ours_prefill_tok_s"] / x["native_prefill_tok_s"] for x in rows]
    return {"threads": threads, "depth": depth, "n_ctx": n_ctx, "medians": med,
            "decode_ratio_median": round(statistics.median(dec), 3),
            "decode_ratio_range": [round(min(dec), 3), round(max(dec), 3)],
            "prefill_ratio_median": round(statistics.median(pre), 3),
            "prefill_ratio_range": [round(min(pre), 3), round(max(pre), 3)],
            # the share of our decode wall time outside llama_decode (sampling, detokenizing, streaming, ctypes)
            "python_share_of_decode_median": med["ours_python_share"],
            "python_share_of_decode_max": max(x["ours_python_share"] for x in rows), "rounds": rows}
