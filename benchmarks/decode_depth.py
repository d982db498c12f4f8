"""Decode speed at the image prompt's depth against the memory roofline, for the q4_k_m variants only: the quick
check of the decode target without the whole `moondream-cpp bench` (no PyTorch, no native tools). Each variant runs
in a fresh process that takes turns between a decode and a read of the memory (moondream_cpp/bench/roofline.py).

    python benchmarks/decode_depth.py [--pairs 24]    # writes benchmarks/results/decode_depth.json
"""
import argparse
import json
from pathlib import Path

from moondream_cpp.bench import ROOFLINE_PAIRS, bench_image, build_models, child, cpu_name
from moondream_cpp.runtime import default_threads

here = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=ROOFLINE_PAIRS)
    ap.add_argument("--work", type=Path, default=here / "work")
    args = ap.parse_args()
    paths = build_models(args.work, print)["_paths"]
    threads = default_threads()
    out = {"command": "python benchmarks/decode_depth.py" + (f" --pairs {args.pairs}" if args.pairs != ROOFLINE_PAIRS
                                                             else ""),
           "machine": {"cpu": cpu_name(), "threads": threads}, "variants": {}}
    for name, extra in (("q4_k_m", []), ("q4_k_m --low-ram", ["--low-ram"])):
        print(f"{name}: {args.pairs} pairs", flush=True)
        out["variants"][name] = child(["--text", str(paths[("text", "q4_k_m")]), "--mmproj",
                                        str(paths[("mmproj", "q8_0")]), "--image", str(bench_image(args.work)),
                                        "--threads", str(threads), "--pairs", str(args.pairs), *extra],
                                       module="roofline")
    (here / "results" / "decode_depth.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
