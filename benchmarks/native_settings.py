"""llama.cpp's own llama-bench on the full-size q4_k_m text model over the settings that matter on a CPU: repacked
weights, threads, flash attention. Evidence for settings.py's defaults that no Python is in the way of. Prints JSON
and writes benchmarks/results/<machine>/native_settings.json.

    bash scripts/build_native.sh && python benchmarks/native_settings.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import benchmark_result, write_json  # noqa: E402


def main():
    from moondream_cpp.bench import build_models, cpu_name, default_work_dir
    from moondream_cpp.bench.native_tools import REPO_TOOLS
    from moondream_cpp.settings import DEFAULT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=default_work_dir(), help="the models of `moondream-cpp bench`")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tools", type=Path, default=REPO_TOOLS)
    a = ap.parse_args()
    exe = a.tools / "llama-bench"
    if not exe.exists():
        sys.exit(f"{exe} is not built: run bash scripts/build_native.sh first")
    text = build_models(a.work, lambda s: print(s, file=sys.stderr))["_paths"][("text", "q4_k_m")]
    cmd = [str(exe), "-m", str(text), "-p", "512", "-n", "32", "-t", "1,2", "--repack", "0,1", "-fa", "0,1",
           "-b", str(DEFAULT.n_batch), "-ub", str(DEFAULT.n_ubatch), "-r", str(a.repeats), "-o", "json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        sys.exit(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"llama-bench exit {p.returncode}")
    rows = [{"threads": r["n_threads"], "repack": r.get("repack", r.get("extra_bufts")), "flash_attn": r["flash_attn"],
             "test": f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}", "tok_s": round(r["avg_ts"], 2),
             "stddev": round(r["stddev_ts"], 2)} for r in json.loads(p.stdout)]
    out = {"command": "python benchmarks/native_settings.py", "cpu": cpu_name(), "model": "q4_k_m text (full size)",
           "llama_bench": " ".join(["llama-bench", *cmd[1:2], "<q4_k_m>", *cmd[3:]]), "results": rows}
    print(json.dumps(out, indent=1))
    write_json(benchmark_result("native_settings"), out)


if __name__ == "__main__":
    main()
