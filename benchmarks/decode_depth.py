"""Decode speed at the image prompt's depth against the memory roofline, for the q4_k_m variants only: the quick
check of the decode target without the whole `moondream-cpp bench` (no PyTorch, no native tools).

    python benchmarks/decode_depth.py [--repeats 3]    # writes benchmarks/results/decode_depth.json
"""
import argparse
import json
from pathlib import Path

from moondream_cpp.bench import VARIANTS, run

here = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=here / "work")
    args = ap.parse_args()
    variants = [v for v in VARIANTS if v[0] in ("q4_k_m", "q4_k_m --low-ram")]
    res = run(args.work, repeats=args.repeats, with_torch=False, tools=here / "no-native-tools", variants=variants,
              log=print)
    keep = ("decode_tok_s", "decode_roofline_tok_s", "decode_vs_roofline", "prefill_tokens", "prefill_tok_s",
            "cold_s", "peak_rss_mb", "runs")
    out = {"machine": res["machine"], "variants": {n: {k: m.get(k) for k in keep} for n, m in res["variants"].items()}}
    (here / "results" / "decode_depth.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
