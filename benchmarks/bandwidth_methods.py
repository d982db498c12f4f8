"""Which numpy read measures the memory roofline: a float64 sum, count_nonzero over uint64 words (what
moondream_cpp.bench.memory_bandwidth_gbs uses) and a C AVX-512 load loop (benchmarks/kernels/read_bw.c), 2 threads,
interleaved rounds. Writes benchmarks/results/bandwidth_methods.json.

    python benchmarks/bandwidth_methods.py [--rounds 5]
"""
import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def numpy_read_gbs(fn, arr: np.ndarray, threads: int = 2) -> float:
    parts, best = np.array_split(arr, threads), 0.0
    for _ in range(3):
        ts = [threading.Thread(target=fn, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, arr.nbytes / (time.perf_counter() - t0) / 1e9)
    return round(best, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    exe = Path(tempfile.mkdtemp()) / "read_bw"
    subprocess.run(["gcc", "-O2", "-march=native", "-fopenmp", str(HERE / "kernels" / "read_bw.c"), "-o", str(exe)],
                   check=True)
    words = np.ones(2 * 2**30 // 8, np.uint64)
    floats = words.view(np.float64)  # any bits will do for a read; the sum's value is not used
    rounds = []
    for _ in range(args.rounds):
        c = float(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()[0])
        r = {"c_avx512_gbs": c, "numpy_sum_f64_gbs": numpy_read_gbs(np.sum, floats),
             "numpy_count_nonzero_u64_gbs": numpy_read_gbs(np.count_nonzero, words)}
        r["sum_over_c"] = round(r["numpy_sum_f64_gbs"] / c, 2)
        r["count_nonzero_over_c"] = round(r["numpy_count_nonzero_u64_gbs"] / c, 2)
        print(json.dumps(r), flush=True)
        rounds.append(r)
    out = HERE / "results" / "bandwidth_methods.json"
    out.write_text(json.dumps({"threads": 2, "gb": 2, "rounds": rounds}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
