"""Decode against the memory roofline (memory.py: how fast the machine reads, how many bytes a decoded token reads),
the two measured in pairs, in one process, turn about.

The shared machine's read bandwidth swings by 2x within minutes, so a roofline read before a run and a decode
measured later compare two different machines. Here each decode of `tokens` tokens (our whole path: llama_decode,
sampling, detokenizing) is sandwiched between two reads of about its own length, and each pair gives a ratio; the
median of the ratios and its confidence interval (stats.median_ci) say where decode stands.

    python -m moondream_cpp.bench.roofline --text T.gguf --mmproj M.gguf --image IMG [--pairs 24] [--low-ram]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import numpy as np

from .memory import ReadProbe, decode_bytes
from .stats import summary


def paired(md, image, question: str, text_gguf: Path, kv_type: str, threads: int, pairs: int = 24,
           tokens: int = 32, log: Callable[[str], None] = lambda s: None) -> dict:
    """`pairs` decodes of `tokens` tokens after the image prompt (the same question again: its prefix stays cached,
    so each decodes at the same depth), each between two reads of the array lasting about as long as the decode."""
    probe = ReadProbe(threads)
    enc = md.encode_image(image)
    warm = md.query(enc, question, max_tokens=tokens)  # the image's prefix into the cache; its depth
    depth = warm.timings["prompt_tokens"]
    window = warm.timings["generation_ms"] / 1000
    reads, decodes, generated = [probe.gbs(window)], [], []
    for i in range(pairs):
        t = md.query(enc, question, max_tokens=tokens).timings
        decodes.append(t["generation_per_second"])
        generated.append(t["generated_tokens"])
        reads.append(probe.gbs(t["generation_ms"] / 1000))
        log(f"pair {i + 1}/{pairs}: decode {decodes[-1]:.2f} tok/s between reads of {reads[-2]:.1f} and "
            f"{reads[-1]:.1f} GB/s")
    per_token = decode_bytes(text_gguf, int(depth + np.median(generated) / 2), kv_type)
    roofs = [(a + b) / 2 * 1e9 / per_token for a, b in zip(reads, reads[1:])]
    ratios = [d / r for d, r in zip(decodes, roofs)]
    best_roof = max(reads) * 1e9 / per_token
    return {"pairs": pairs, "tokens": tokens, "depth": depth, "kv_type": kv_type, "bytes_per_token": per_token,
            "decode_vs_roofline": summary(ratios),
            "decode_tok_s_median": round(float(np.median(decodes)), 2),
            "roofline_tok_s_median": round(float(np.median(roofs)), 2),
            "read_gbs_median": round(float(np.median(reads)), 1),
            "read_gbs_range": [round(min(reads), 1), round(max(reads), 1)],
            # the harshest reading: the fastest decode against the fastest read of the whole series
            "best_decode_vs_best_read": round(max(decodes) / best_roof, 3),
            "decode_tok_s": [round(x, 2) for x in decodes], "read_gbs": [round(x, 2) for x in reads]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", required=True)
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--low-ram", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="each pair on stderr")
    a = ap.parse_args(argv)
    import sys

    from .. import Moondream
    from ..errors import MoondreamError
    from ..image import load_image
    from ..runtime import default_threads
    from ..settings import DEFAULT, LOW_RAM

    threads = a.threads or default_threads()
    try:
        image = load_image(a.image)  # a bad path fails here, before the model loads
        md = Moondream.load(a.text, a.mmproj, n_threads=threads, low_ram=a.low_ram)
    except MoondreamError as e:
        sys.exit(f"error: {e}")
    from .measure import QUESTION

    out = paired(md, image, QUESTION, Path(a.text), (LOW_RAM if a.low_ram else DEFAULT).kv_type, threads, a.pairs,
                 a.tokens, log=(lambda s: print(s, file=sys.stderr, flush=True)) if a.verbose else (lambda s: None))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
