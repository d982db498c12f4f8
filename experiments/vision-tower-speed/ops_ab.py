"""The vision tower's ops, one build against another: llama.cpp's own `test-backend-ops perf` on the CPU backend for
one crop's matmuls (1152x1152, 4320x1152 and 1152x4320 weights times 729 columns, by weight type) and its attention
(16 heads of 72, 729 x 729, f16 K/V), the builds taking turns with PyTorch's F.linear on the same shapes (fp32, bf16),
and each op's paired speed-up. test-backend-ops runs the CPU backend on half the hardware threads (1 here), so PyTorch
runs on 1 thread too.

    python experiments/vision-tower-speed/ops_ab.py TEST_BACKEND_OPS BASE_LIBS NEW_LIBS [--rounds 5]

TEST_BACKEND_OPS: the tool built from our tree (README.md here says how); BASE_LIBS, NEW_LIBS: folders holding each
build's libggml*.so (found through LD_LIBRARY_PATH). Writes <machine>-ops.json beside this script.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1]))
from benchmarks.harness import experiment_result, write_json  # noqa: E402

FILTER = ("-o", "MUL_MAT,FLASH_ATTN_EXT", "-p", r"m=(1152|4320),n=729|hsk=72,hsv=72,nh=16")
LINE = re.compile(r"^\s*(\w+)\((.*?)\):.*?([\d.]+) (GFLOPS|GB/s)")


def run(tool: str, libs: str) -> dict[str, float]:
    out = subprocess.run([tool, "perf", "-b", "CPU", *FILTER], capture_output=True, text=True, check=True,
                         env={**os.environ, "LD_LIBRARY_PATH": libs}).stdout
    got = {}
    for line in out.splitlines():
        m = LINE.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if m:
            op, params, value, _unit = m.groups()
            key = op + "(" + ",".join(p for p in params.split(",") if p.split("=")[0] in
                                      ("type_a", "m", "n", "k", "hsk", "nh", "kv", "nb", "type_KV")) + ")"
            got[key] = float(value)
    return got


def torch_linear() -> dict[str, float]:
    """GFLOPS of F.linear (one thread) on the tower's matmul shapes, fp32 and bf16."""
    code = """
import json, time, torch
torch.set_num_threads(1)
got = {}
for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
    for m, k in ((1152, 1152), (4320, 1152), (1152, 4320)):
        w, x = torch.randn(m, k).to(dt), torch.randn(729, k).to(dt)
        torch.nn.functional.linear(x, w)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < 1.0:
            torch.nn.functional.linear(x, w)
            n += 1
        got[f"torch.linear(type={name},m={m},n=729,k={k})"] = 2 * m * k * 729 * n / (time.perf_counter() - t) / 1e9
print(json.dumps(got))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tool")
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    from moondream_cpp.bench.stats import summary

    rounds = []
    for r in range(a.rounds):
        order = [("base", a.base), ("new", a.new)] if r % 2 == 0 else [("new", a.new), ("base", a.base)]
        row = {"load_avg_1m": round(os.getloadavg()[0], 2)}
        for name, libs in order:
            row[name] = run(a.tool, libs)
        row["torch"] = torch_linear()
        rounds.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    ops = {}
    for key in rounds[0]["base"]:
        base = [r["base"][key] for r in rounds]
        new = [r["new"][key] for r in rounds]
        ops[key] = {"gflops_median": {"base": round(statistics.median(base), 1),
                                      "new": round(statistics.median(new), 1)},
                    "speedup_paired": summary([n / b for n, b in zip(new, base)])}
    torch_ops = {key: round(statistics.median(r["torch"][key] for r in rounds), 1) for key in rounds[0]["torch"]}
    result = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "rounds": a.rounds, "ops": ops,
              "torch_gflops_median": torch_ops,
              "rounds_detail": rounds}
    write_json(experiment_result(HERE, "ops"), result)
    print(json.dumps(ops, indent=1))


if __name__ == "__main__":
    main()
