"""How fast two cores could decode q4_k_m if memory were free: the compute ceiling of decode, set against the paired
roofline series of `moondream-cpp bench`. It says at which read bandwidth the 0.8x-roofline target stops being
reachable on this machine, whatever the memory does.

The ceiling counts only the three kernels that read the bytes (the q4_K and q6_K dot products and decode attention),
each at the best rate measured for it (experiments/kernels/<machine>.json: the dot products on both threads over a
matrix that fits in L2, so no wait on memory; experiments/decode-attention/<machine>.json: the fastest shape of the
attention kernel), and every other op and every thread wait as free. So the real ceiling is lower.

    python experiments/decode-ceiling/decode_ceiling.py    # -> <machine>.json beside it
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1]))
from benchmarks.harness import ROOT, benchmark_result, experiment_result, write_json  # noqa: E402
from moondream_cpp.bench import default_work_dir  # noqa: E402
from moondream_cpp.bench.memory import decode_bytes  # noqa: E402
from moondream_cpp.bench.stats import summary  # noqa: E402
from moondream_cpp.gguf_header import read_header  # noqa: E402

TARGET = 0.8


def weight_bytes_by_type(gguf: Path) -> dict[str, int]:
    """Bytes a decoded token reads from each weight type (the embedding table: one row, left out as decode_bytes)."""
    by_type: Counter = Counter()
    for t in read_header(gguf).tensors:
        if t.name != "token_embd.weight":
            by_type[t.ggml_type] += t.nbytes
    return dict(by_type)


def best_kernel_rates(kernels: dict, attention: dict) -> dict[str, float]:
    """GB/s of bytes read: each dot product at its fastest in-L2 rate on two threads (this CPU's build), attention
    at its fastest shape and pages (the half-only variants count bytes they did not read, so they are left out)."""
    rates = {}
    for entry in kernels["dot_0007"]:
        if entry["flags"] == "-march=native":
            r = entry["result"]
            rates[r["type"].upper()] = max(r["l2_t2"]["a_gbs"], r["l2_t2"]["b_gbs"])
    rates["attention"] = max(v["best_gbs"] for v in attention["variants"] if "half only" not in v["name"])
    return rates


def ceiling(gguf: Path, depth: int, rates: dict[str, float]) -> dict:
    weights = weight_bytes_by_type(gguf)
    total = decode_bytes(gguf, depth)
    kv = total - sum(weights.values())
    ms = {t: weights[t] / rates[t] / 1e6 for t in ("Q4_K", "Q6_K")}
    ms["attention"] = kv / rates["attention"] / 1e6
    tok_s = 1000 / sum(ms.values())
    return {"depth": depth, "bytes_per_token": total, "mb_read": {**{t: round(b / 1e6, 1) for t, b in weights.items()},
            "kv_cache": round(kv / 1e6, 1)}, "kernel_gbs": rates, "kernel_ms": {k: round(v, 2) for k, v in ms.items()},
            "ceiling_tok_s": round(tok_s, 1),
            # above this read rate even the ceiling is below TARGET x the roofline
            "target_reachable_below_gbs": round(tok_s * total / TARGET / 1e9, 1)}


def against_series(c: dict, paired: dict) -> dict:
    """Each pair of the bench's roofline series: its decode as a share of the ceiling, and the share TARGET needed
    at that pair's read rate (the mean of the reads around it)."""
    reads = paired["read_gbs"]
    roofs = [(a + b) / 2 * 1e9 / c["bytes_per_token"] for a, b in zip(reads, reads[1:])]
    share = [d / c["ceiling_tok_s"] for d in paired["decode_tok_s"]]
    needed = [TARGET * r / c["ceiling_tok_s"] for r in roofs]
    # pairs where TARGET needed more of the ceiling than the best decode of the whole series reached
    beyond = [i for i, n in enumerate(needed) if n > max(share)]
    return {"pairs": len(roofs), "decode_share_of_ceiling_range": [round(min(share), 3), round(max(share), 3)],
            "needed_share_of_ceiling_range": [round(min(needed), 3), round(max(needed), 3)],
            "pairs_needing_more_than_the_best_share": len(beyond),
            "their_reads_gbs": [round(roofs[i] * c["bytes_per_token"] / 1e9, 1) for i in beyond],
            "their_decode_tok_s": [paired["decode_tok_s"][i] for i in beyond],
            # the target's own ratio (decode over the pair's roofline) in the pairs where memory was the limit
            "decode_vs_roofline_in_the_other_pairs": summary([d / r for i, (d, r) in
                                                              enumerate(zip(paired["decode_tok_s"], roofs))
                                                              if i not in beyond])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=default_work_dir() / "gguf" / "moondream-bench-text-q4_k_m.gguf")
    a = ap.parse_args(argv)
    if not a.gguf.is_file():
        raise SystemExit(f"error: {a.gguf} not found: `moondream-cpp bench` builds it (or pass --gguf)")
    sources = {"bench": benchmark_result("bench"), "kernels": experiment_result(HERE.parent / "kernels"),
               "attention": experiment_result(HERE.parent / "decode-attention")}
    for path in sources.values():
        if not path.is_file():
            raise SystemExit(f"error: {path} not found: run its benchmark or experiment on this machine first")
    bench = json.loads(sources["bench"].read_text())
    paired = bench["decode_roofline_paired"]["q4_k_m"]
    rates = best_kernel_rates(json.loads(sources["kernels"].read_text()),
                              json.loads(sources["attention"].read_text()))
    c = ceiling(a.gguf, paired["depth"] + paired["tokens"] // 2, rates)
    result = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "ceiling": c,
              "bench_series": against_series(c, paired),
              "sources": [f"{p.relative_to(ROOT)}" + (" (decode_roofline_paired.q4_k_m)" if k == "bench" else "")
                          for k, p in sources.items()]}
    print(json.dumps(result, indent=1))
    write_json(experiment_result(HERE), result)


if __name__ == "__main__":
    main()
