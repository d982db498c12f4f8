"""Our Python path against native llama.cpp on the same GGUF and settings: prefill of the image prompt's length,
then 32 decoded tokens at that depth, against llama-server built from our llama.cpp tree (scripts/build_native.sh), a
native program that stays loaded as ours does. The two sides take turns a few seconds apart, one request each (the
order alternating), and every pair gives a ratio. llama-server prefills and decodes as ours does (its timings: prompt
tokens over prompt time; decode steps over the time from the first sampled token to the last), sampling with top_k
1, the leanest greedy its sampler chain has.

Ratios go through stats.summary: their median and its confidence interval. Our side also times each llama_decode
call it makes, so the share of our decode time spent outside llama.cpp (sampling, detokenizing, ctypes) is measured
on the same tokens, free of the machine's drift. (The earlier comparison against llama-bench in rounds is an
experiment now: experiments/python-vs-llama-bench/.)"""
from __future__ import annotations

import json
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .processes import stop
from .stats import summary

QUESTION = "Describe this image."
TOKENS = 32
PAIRS, DECODE_PAIRS = 40, 80  # llama-server turns a side: with a fresh prefill, then decode only (~9 + ~3 minutes)


class OurPath:
    """Our whole path (Moondream.query) on one image: a fresh prefill of its prompt and TOKENS decoded tokens, with
    each llama_decode call timed."""

    def __init__(self, text: Path, mmproj: Path, image: Path, threads: int, n_ctx: int | None = None):
        from .. import Moondream

        self.md = Moondream.load(text, mmproj, n_threads=threads, **({"n_ctx": n_ctx} if n_ctx else {}))
        self.enc = self.md.encode_image(image)
        self.calls: list[tuple[int, float]] = []  # (tokens, seconds) of each llama_decode
        self.md.context.on_decode = lambda n, secs: self.calls.append((n, secs))
        self.md.stop_ids = frozenset()  # always TOKENS tokens, as llama-server's ignore_eos: the same work
        self.depth = self.run()["depth"]

    def run(self, fresh: bool = True) -> dict:
        """fresh: the whole prompt evaluated again, as for a first question; else the question asked again, its
        prefix still cached (one position evaluated), so only the decode is timed."""
        if fresh:
            self.md.forget_context()
        self.calls.clear()
        t = self.md.query(self.enc, QUESTION, max_tokens=TOKENS).timings
        if t["generated_tokens"] != TOKENS:
            raise RuntimeError(f"our side decoded {t['generated_tokens']} tokens, not {TOKENS}")
        steps = [s for k, s in self.calls if k == 1][-t["generated_tokens"]:]  # the answer's one-token decodes
        gen_s = t["generation_ms"] / 1000
        out = {"depth": t["prompt_tokens"], "decode": t["generation_per_second"],
               "python_share": 1 - sum(steps) / gen_s}
        if fresh:
            out["prefill"] = t["prompt_per_second"]
        return out

    def close(self):
        self.md.close()


def server_args(text: Path, threads: int) -> list[str]:
    """llama-server arguments for our default settings as decided for this machine and the text model, one slot,
    no prompt cache in RAM."""
    from ..gguf_check import check_text
    from ..settings import DEFAULT

    cfg = DEFAULT.for_machine(check_text(text).quant)
    return ["-m", str(text), "-t", str(threads), "-tb", str(threads), "-c", str(cfg.n_ctx), "-b", str(cfg.n_batch),
            "-ub", str(cfg.n_ubatch), "-fa", "on" if cfg.flash_attn else "off",
            "--repack" if cfg.extra_bufts else "--no-repack", "-lm", "mmap" if cfg.mmap else "none",
            "-ctk", cfg.kv_type, "-ctv", cfg.kv_type, "-np", "1", "--cache-ram", "0", "-ngl", str(cfg.n_gpu_layers)]


@contextmanager
def _server(exe: Path, text: Path, threads: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # its log goes to a file: a pipe nobody reads fills up, and the server then blocks on it (and never exits)
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen([str(exe), *server_args(text, threads), "--host", "127.0.0.1", "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(1200):
                try:
                    if json.loads(urllib.request.urlopen(url + "/health", timeout=1).read()).get("status") == "ok":
                        break
                except OSError:
                    if p.poll() is not None:
                        log.seek(0)
                        raise RuntimeError("llama-server exited: " + log.read().decode(errors="replace")[-2000:])
                time.sleep(0.1)
            yield url
        finally:
            stop(p)


def _native_request(url: str, depth: int, n_vocab: int, fresh: bool = True) -> dict:
    """One request of `depth` prompt tokens, then TOKENS greedy tokens; llama-server's own timings. fresh: the
    whole prompt evaluated; else the same prompt again, its cached prefix reused (one position evaluated)."""
    ids = [(7 * i) % n_vocab for i in range(depth)]  # any tokens: speed does not depend on which
    body = {"prompt": ids, "n_predict": TOKENS, "ignore_eos": True, "cache_prompt": not fresh, "samplers": ["top_k"],
            "top_k": 1}
    req = urllib.request.Request(url + "/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = json.loads(urllib.request.urlopen(req, timeout=600).read())["timings"]
    want = depth if fresh else 1
    if t["prompt_n"] != want or t["predicted_n"] != TOKENS:
        raise RuntimeError(f"llama-server evaluated {t['prompt_n']} prompt tokens and {t['predicted_n']} predicted, "
                           f"not {want} and {TOKENS}")
    return {"decode": t["predicted_per_second"], **({"prefill": t["prompt_per_second"]} if fresh else {})}


def lockstep(exe: Path, text: Path, mmproj: Path, image: Path, threads: int, pairs: int = PAIRS,
             decode_pairs: int = DECODE_PAIRS, log: Callable[[str], None] = lambda s: None) -> dict:
    """`pairs` turns of (our query, one llama-server request) with a fresh prefill each, then `decode_pairs` turns
    with the prompt cached, where only the decode runs (a turn of about a second a side: the machine drifts less
    between the two). The order alternates."""
    ours = OurPath(text, mmproj, image, threads)
    rows = []
    try:
        with _server(exe, text, threads) as url:
            _native_request(url, ours.depth, ours.md.n_real_tokens)  # warm, as ours was by its first run
            for i in range(pairs + decode_pairs):
                fresh = i < pairs
                row = {"fresh": fresh}
                for who in (("ours", "native") if i % 2 == 0 else ("native", "ours")):
                    got = (ours.run(fresh) if who == "ours" else
                           _native_request(url, ours.depth, ours.md.n_real_tokens, fresh))
                    row.update({f"{who}_{k}": round(v, 4) for k, v in got.items() if k != "depth"})
                rows.append(row)
                log(f"pair {i + 1}/{pairs + decode_pairs}: {row}")
    finally:
        ours.close()
    return paired_result("llama-server", threads, ours.depth, rows)


def paired_result(native: str, threads: int, depth: int, rows: list[dict]) -> dict:
    """Rows of one turn a side each (ours_* and native_* tok/s, our python_share) as ratios with their confidence
    intervals, the medians of each column and the rows themselves."""
    dec = [x["ours_decode"] / x["native_decode"] for x in rows]
    pre = [x["ours_prefill"] / x["native_prefill"] for x in rows if "ours_prefill" in x]
    share = [x["ours_python_share"] for x in rows]
    keys = [k for k in rows[0] if k.startswith(("ours_", "native_"))]
    return {"native": native, "threads": threads, "depth": depth, "tokens": TOKENS,
            "decode_ratio": summary(dec), "prefill_ratio": summary(pre),
            "medians": {k: round(statistics.median(x[k] for x in rows if k in x), 3) for k in keys},
            # the share of our decode wall time outside llama_decode (sampling, detokenizing, streaming, ctypes)
            "python_share_of_decode_median": round(statistics.median(share), 4),
            "python_share_of_decode_max": round(max(share), 4), "rows": rows}
