"""Memory of a long batch-captioning run: `moondream-cpp caption DIR --out` over N generated images, its RSS
sampled all along; start (after the first 50 records), end and peak, plus images/s. Prints JSON and writes
benchmarks/results/<machine>/batch_memory.json.

    python benchmarks/batch_memory.py [--n 1000] [--model NAME_OR_DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import benchmark_result, write_json  # noqa: E402
from training import synth  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    cli = str(Path(sys.executable).with_name("moondream-cpp"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(2026)
        for i in range(a.n):
            img, _ = synth.make_image(rng, synth.STYLES_ALL)
            (tmp / "img" / f"{i // 100:02d}").mkdir(parents=True, exist_ok=True)
            img.save(tmp / "img" / f"{i // 100:02d}" / f"{i:05d}.png")
        out = tmp / "captions.jsonl"
        cmd = [cli, "caption", str(tmp / "img"), "--out", str(out)] + (["--model", a.model] if a.model else [])
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples = []  # (records done, rss MB)
        while p.poll() is None:
            try:
                done = out.read_bytes().count(b"\n") if out.exists() else 0
                samples.append((done, rss_mb(p.pid)))
            except (OSError, StopIteration):
                pass
            time.sleep(0.2)
        secs = time.perf_counter() - t0
        lines = out.read_text().splitlines()
    assert p.returncode == 0 and len(lines) == a.n, (p.returncode, len(lines))
    start = next(r for d, r in samples if d >= min(50, a.n // 10))
    end = [r for d, r in samples if d >= a.n - max(5, a.n // 100)]
    res = {"command": "python benchmarks/batch_memory.py" + (f" --n {a.n}" if a.n != 1000 else ""),
           "images": a.n, "seconds": round(secs, 1), "images_per_s": round(a.n / secs, 2),
           "rss_mb_after_50": round(start, 1), "rss_mb_at_end": round(end[-1] if end else samples[-1][1], 1),
           "rss_mb_peak": round(max(r for _, r in samples), 1),
           "rss_mb_by_tenth": [round(next(r for d, r in samples if d >= k * a.n // 10), 1) for k in range(1, 10)]}
    print(json.dumps(res, indent=1))
    write_json(benchmark_result("batch_memory"), res)


if __name__ == "__main__":
    main()
