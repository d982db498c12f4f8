"""Which numpy read measures the memory roofline: a float64 sum, count_nonzero over uint64 words (what
moondream_cpp.bench.memory_bandwidth_gbs uses) and a C AVX-512 load loop (read_bw.c beside this script), 2 threads,
interleaved rounds.

    python experiments/bandwidth-methods/bandwidth_methods.py [--rounds 5]    # -> <machine>.json beside it
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1]))
from benchmarks.harness import experiment_result, write_json  # noqa: E402
from moondream_cpp.bench import memory_bandwidth_gbs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    exe = Path(tempfile.mkdtemp()) / "read_bw"
    subprocess.run(["gcc", "-O2", "-march=native", "-fopenmp", str(HERE / "read_bw.c"), "-o", str(exe)], check=True)
    rounds = []
    for _ in range(args.rounds):
        c = float(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()[0])
        r = {"c_avx512_gbs": c, "numpy_sum_f64_gbs": round(memory_bandwidth_gbs(2, read=np.sum, dtype=np.float64), 1),
             "numpy_count_nonzero_u64_gbs": round(memory_bandwidth_gbs(2), 1)}
        r["sum_over_c"] = round(r["numpy_sum_f64_gbs"] / c, 2)
        r["count_nonzero_over_c"] = round(r["numpy_count_nonzero_u64_gbs"] / c, 2)
        print(json.dumps(r), flush=True)
        rounds.append(r)
    write_json(experiment_result(HERE), {"threads": 2, "gb": 2, "rounds": rounds})


if __name__ == "__main__":
    main()
