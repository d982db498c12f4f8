"""Image encode time and peak memory by vision-tower (mmproj) file: each type with the vision MLP padded to a multiple
of 32 (what the converter writes now) against the same type unpadded (4304 wide, as before and as in the published
moondream2 GGUF), each file in a fresh process, the files in rotated order every round, and the paired ratios.

    python experiments/vision-mlp-padding/vision_types.py [--rounds 4]   # -> <machine>.json beside it

Needs the full-size files of `moondream-cpp bench` (WORK/gguf, WORK its --work) and their unpadded forerunners in
WORK/gguf-unpadded (any mmproj converted before the padding, or made with spec.VISION_FF_MULTIPLE = 16).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1]))
from benchmarks.harness import experiment_result, write_json  # noqa: E402

TYPES = ("q8_0", "bf16", "f16")
IMAGES = 3


def child(mmproj: str, text: str, threads: int) -> dict:
    """Load, then encode IMAGES different images (the first includes loading the vision tower: it is on demand)."""
    import numpy as np
    from PIL import Image

    from moondream_cpp import Moondream

    md = Moondream.load(text, mmproj, n_threads=threads)
    times = []
    for i in range(IMAGES):
        img = Image.fromarray((np.random.default_rng(i).random((300, 400, 3)) * 255).astype("uint8"))
        t = time.perf_counter()
        md.encode_image(img)
        times.append(time.perf_counter() - t)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return {"encode_s": [round(x, 3) for x in times], "peak_rss_mb": round(hwm / 1024, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", nargs=2, metavar=("MMPROJ", "TEXT"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help="the --work of `moondream-cpp bench` (default: its)")
    a = ap.parse_args(argv)
    from moondream_cpp.bench import default_work_dir
    from moondream_cpp.bench.stats import summary
    from moondream_cpp.runtime import default_threads

    threads = a.threads or default_threads()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], threads)))
        return
    work = a.work or default_work_dir()
    text = work / "gguf" / "moondream-bench-text-q4_k_m.gguf"
    files = {}
    for t in TYPES:
        for padded, d in ((True, "gguf"), (False, "gguf-unpadded")):
            f = work / d / f"moondream-bench-mmproj-{t}.gguf"
            if not f.is_file():
                sys.exit(f"error: {f} not found (see this script's header)")
            files[(t, padded)] = f
    runs = {k: [] for k in files}
    keys = list(files)
    for r in range(a.rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotated: no file always first or last
            out = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--child", str(files[k]),
                                  str(text)], capture_output=True, text=True, check=True)
            runs[k].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: {k[0]} {'padded' if k[1] else 'unpadded'}: {runs[k][-1]}", file=sys.stderr)

    def later(run):  # the encodes after the first: the tower's load left out
        return statistics.median(run["encode_s"][1:])

    result = {"what": __doc__.split("\n\n")[0].replace("\n", " "),
              "machine": platform.processor() or platform.machine(), "threads": threads,
              "rounds": a.rounds, "text": text.name, "types": {}}
    for t in TYPES:
        p, u = runs[(t, True)], runs[(t, False)]
        result["types"][t] = {
            "file_mb": {"padded": round(files[(t, True)].stat().st_size / 2**20, 1),
                        "unpadded": round(files[(t, False)].stat().st_size / 2**20, 1)},
            "encode_s_median": {"padded": round(statistics.median(map(later, p)), 3),
                                "unpadded": round(statistics.median(map(later, u)), 3)},
            "first_encode_s_median": {"padded": round(statistics.median(x["encode_s"][0] for x in p), 3),
                                      "unpadded": round(statistics.median(x["encode_s"][0] for x in u), 3)},
            "peak_rss_mb_median": {"padded": statistics.median(x["peak_rss_mb"] for x in p),
                                   "unpadded": statistics.median(x["peak_rss_mb"] for x in u)},
            # unpadded time over padded time, encode by encode of the same round: > 1 means padded is faster
            "speedup_paired": summary([a_ / b_ for x, y in zip(u, p) for a_, b_ in zip(x["encode_s"][1:],
                                                                                       y["encode_s"][1:])]),
            "runs": {"padded": p, "unpadded": u}}
    write_json(experiment_result(HERE), result)
    print(json.dumps({t: {k: v for k, v in r.items() if k != "runs"} for t, r in result["types"].items()}, indent=1))


if __name__ == "__main__":
    main()
