"""Decode speed at the image prompt's depth against the memory roofline, for the q4_k_m variants only: the quick
check of the decode target without the whole `moondream-cpp bench` (no PyTorch, no native tools). Each variant runs
in a fresh process that takes turns between a decode and a read of the memory (moondream_cpp/bench/roofline.py).

    python benchmarks/decode_depth.py [--pairs 24]    # -> benchmarks/results/<machine>/decode_depth.json
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import benchmark_result, write_json  # noqa: E402
from moondream_cpp.bench import (ROOFLINE_PAIRS, bench_image, build_models, child, cpu_name,  # noqa: E402
                                 default_work_dir)
from moondream_cpp.runtime import default_threads  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=ROOFLINE_PAIRS)
    ap.add_argument("--work", type=Path, default=default_work_dir(), help="the models of `moondream-cpp bench`")
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
    print(json.dumps(out, indent=2))
    write_json(benchmark_result("decode_depth"), out)


if __name__ == "__main__":
    main()
