"""Our Python path against native llama-bench on the same GGUF and settings, interleaved round by round so that the
shared machine's drift hits both alike: decode of 32 tokens after the image prompt, and prefill of that prompt.
Rounds alternate which side goes first. In a round each side runs `reps` times and keeps its fastest run: the shared
machine only ever slows a run down, so the best of a few short runs is the least disturbed one (timeit's reasoning),
and a round's ratio compares the two sides' best. Our side also times each llama_decode call it makes, so the share
of our decode time spent in Python (outside llama.cpp) is measured on the same tokens, free of the machine's drift."""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

QUESTION = "Describe this image."
REPS = 3  # runs a side per round: a round compares the fastest of each


def native_tok_s(exe: Path, text: Path, threads: int, args: list[str], reps: int = 1) -> list[float]:
    """One llama-bench run (-r reps) on our default settings: the tokens per second of each repetition."""
    from . import llama_bench_settings

    cmd = [str(exe), "-m", str(text), "-t", str(threads), "-r", str(reps), *llama_bench_settings(text), "-o", "json",
           *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=True)
    return [float(x) for x in json.loads(p.stdout)[0]["samples_ts"]]


def interleaved(exe: Path, text: Path, mmproj: Path, image: Path, threads: int, rounds: int, match_ctx: bool = False,
                log: Callable[[str], None] = lambda s: None, reps: int = REPS) -> dict:
    """`rounds` rounds of (our query, llama-bench prefill + decode at the same depth), each side `reps` times a round;
    medians and ranges of the rounds' best-against-best ratios, and our Python share of decode. match_ctx: our context
    sized as llama-bench sizes its own."""
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
        row = {}
        for who in (("ours", "native") if r % 2 == 0 else ("native", "ours")):
            if who == "native":
                pre = native_tok_s(exe, text, threads, ["-p", str(depth), "-n", "0"], reps)
                dec = native_tok_s(exe, text, threads, ["-p", "0", "-n", "32", "-d", str(depth)], reps)
                row.update({"native_prefill_tok_s": max(pre), "native_decode_tok_s": max(dec),
                            "native_prefill_samples": pre, "native_decode_samples": dec})
                continue
            pre, dec, in_llama, share = [], [], [], []
            for _ in range(reps):
                md.clear_image_cache()  # drops the saved prefix states: the query prefills the whole prompt again
                md._kv.clear()
                md._L.llama_memory_clear(md._mem, True)
                calls.clear()
                ours = md.query(enc, QUESTION, max_tokens=32)  # prefill of `depth` positions, then 32 tokens
                n = ours.timings["generated_tokens"]
                steps = [sec for k, sec in calls if k == 1][-n:]  # the answer's one-token decodes
                gen_s = ours.timings["generation_ms"] / 1000
                pre.append(ours.timings["prompt_per_second"])
                dec.append(ours.timings["generation_per_second"])
                in_llama.append(round(len(steps) / sum(steps), 2))
                share.append(round(1 - sum(steps) / gen_s, 4))
            row.update({"ours_prefill_tok_s": max(pre), "ours_decode_tok_s": max(dec),
                        "ours_in_llama_decode_tok_s": max(in_llama), "ours_python_share": statistics.median(share),
                        "ours_prefill_samples": pre, "ours_decode_samples": dec, "ours_python_share_samples": share})
        rows.append(row)
        log(f"round {r + 1}: {row}")
    n_ctx = md.n_ctx
    md.close()
    med = {k: round(statistics.median(x[k] for x in rows), 4) for k in rows[0] if not k.endswith("_samples")}
    dec = [x["ours_decode_tok_s"] / x["native_decode_tok_s"] for x in rows]
    pre = [x["ours_prefill_tok_s"] / x["native_prefill_tok_s"] for x in rows]

    def series_max(key):  # the largest sample of the whole series (for tok/s: the fastest run)
        return max(max(x[key]) for x in rows)
    return {"threads": threads, "depth": depth, "n_ctx": n_ctx, "reps_per_round": reps, "medians": med,
            "decode_ratio_median": round(statistics.median(dec), 3),
            "decode_ratio_range": [round(min(dec), 3), round(max(dec), 3)],
            "prefill_ratio_median": round(statistics.median(pre), 3),
            "prefill_ratio_range": [round(min(pre), 3), round(max(pre), 3)],
            "decode_ratio_best_of_all": round(series_max("ours_decode_samples")
                                              / series_max("native_decode_samples"), 3),
            "prefill_ratio_best_of_all": round(series_max("ours_prefill_samples")
                                               / series_max("native_prefill_samples"), 3),
            # the share of our decode wall time outside llama_decode (sampling, detokenizing, streaming, ctypes)
            "python_share_of_decode_median": med["ours_python_share"],
            "python_share_of_decode_max": series_max("ours_python_share_samples"), "rounds": rows}
