"""Our Python path against native llama-server on the same GGUF and settings, turn about (moondream_cpp/bench/
versus_native.py says how): the claim "our Python path within 3% of native". `moondream-cpp bench` runs the same
comparison; this runs it alone. Prints JSON and writes benchmarks/results/<machine>/python_vs_native.json.

    bash scripts/build_native.sh && python benchmarks/python_vs_native.py [--pairs 40] [--decode-pairs 80]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import benchmark_result, write_json  # noqa: E402


def main():
    from moondream_cpp.bench import bench_image, build_models, default_work_dir
    from moondream_cpp.bench.native_tools import REPO_TOOLS
    from moondream_cpp.bench.versus_native import DECODE_PAIRS, PAIRS, lockstep
    from moondream_cpp.runtime import default_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=default_work_dir(), help="the models of `moondream-cpp bench`")
    ap.add_argument("--pairs", type=int, default=PAIRS, help="turns a side with a fresh prefill")
    ap.add_argument("--decode-pairs", type=int, default=DECODE_PAIRS,
                    help="then turns a side with the prompt cached (decode only)")
    ap.add_argument("--type", default="q4_k_m")
    ap.add_argument("--tools", type=Path, default=REPO_TOOLS)
    a = ap.parse_args()
    exe = a.tools / "llama-server"
    if not exe.exists():
        sys.exit(f"{exe} is not built: run bash scripts/build_native.sh first")
    paths = build_models(a.work, lambda s: print(s, file=sys.stderr))["_paths"]
    text, mmproj, image = paths[("text", a.type)], paths[("mmproj", "q8_0")], bench_image(a.work)
    res = lockstep(exe, text, mmproj, image, default_threads(), a.pairs, a.decode_pairs,
                   log=lambda s: print(s, file=sys.stderr, flush=True))
    cmd = "python benchmarks/python_vs_native.py" + (f" --pairs {a.pairs}" if a.pairs != PAIRS else "") + (
        f" --decode-pairs {a.decode_pairs}" if a.decode_pairs != DECODE_PAIRS else "")
    out = {"command": cmd, "type": a.type, **res}
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    write_json(benchmark_result("python_vs_native"), out)


if __name__ == "__main__":
    main()
