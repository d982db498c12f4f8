"""Patch 0007 changes how ggml's q4_K and q6_K dot products compute, not what: the stock kernels (x86/quants.c of the
unpatched sdist) and ours, compiled side by side for this CPU and for plain AVX2, must give the same float bit for bit
on random blocks (experiments/kernels/dot_check.sh; its speed half is experiments/kernels/run.sh's)."""
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "build" / "native" / "bin"
pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the patched kernels are x86's"),
    pytest.mark.skipif(not (BIN / "llama-bench").exists() and not os.environ.get("CI"),
                       reason="native build missing (bash scripts/build_native.sh; CI builds it)"),
]


def test_q4k_q6k_dot_products_are_bit_identical_to_stock():
    env = dict(os.environ, NTEST="200000", DOT_AB_SPEED="0")
    run = subprocess.run(["bash", str(ROOT / "experiments" / "kernels" / "dot_check.sh")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["flags"].split()[0], r["result"]["type"]) for r in rows] == [
        ("-march=native", "q4_K"), ("-march=native", "q6_K"), ("-mavx2", "q4_K"), ("-mavx2", "q6_K")]
    for r in rows:
        assert r["result"]["tested_rows"] == 200000 and r["result"]["mismatches"] == 0, r
