"""Which runtime settings are fastest and leanest on this machine: each combination measured in fresh processes
(median of --repeats) on the full-size q4_k_m text + q8_0 mmproj that `moondream-cpp bench` builds. Prints JSON
and writes benchmarks/results/<machine>/settings_sweep.json (the evidence behind moondream_cpp/settings.py's defaults).

    python benchmarks/settings_sweep.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks.harness import benchmark_result, write_json  # noqa: E402

COMBOS = {  # name -> Settings overrides of the defaults (settings.py)
    "default": {},
    "vision kept loaded": {"mmproj_on_demand": False},
    "repacked weights": {"extra_bufts": True},
    "repacked weights, vision kept loaded (the earlier default)": {"extra_bufts": True, "mmproj_on_demand": False},
    "no mmap": {"mmap": False},
    "flash attention on": {"flash_attn": True},
    "KV q8_0 (+FA)": {"kv_type": "q8_0"},
    "ubatch 256": {"n_ubatch": 256},
    "ubatch 1024, batch 1024": {"n_ubatch": 1024, "n_batch": 1024},
    "1 thread": {"n_threads": 1},
    "no prefix states": {"state_cache_mb": 0},
}


def main():
    from moondream_cpp.bench import bench_image, build_models, child, default_work_dir, median_of
    from moondream_cpp.settings import DEFAULT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=default_work_dir(), help="the models of `moondream-cpp bench`")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", help="combination names separated by ; (default: all)")
    a = ap.parse_args()
    combos = {k: v for k, v in COMBOS.items() if not a.only or k in a.only.split(";")}
    paths = build_models(a.work, lambda s: print(s, file=sys.stderr))["_paths"]
    image = bench_image(a.work)
    out = {"command": "python benchmarks/settings_sweep.py" + (f" --repeats {a.repeats}" if a.repeats != 3 else ""),
           "model": "q4_k_m text + q8_0 mmproj", "defaults": dataclasses.asdict(DEFAULT), "results": {}}
    for name, kw in combos.items():
        print(f"measuring {name}", file=sys.stderr)
        args = ["--text", str(paths[("text", "q4_k_m")]), "--mmproj", str(paths[("mmproj", "q8_0")]),
                "--image", str(image), "--settings", json.dumps(kw)]
        r = median_of([child(args) for _ in range(a.repeats)])
        out["results"][name] = {k: r.get(k) for k in ("load_s", "encode_ms", "prefill_tok_s", "decode_tok_s",
                                                      "cold_s", "another_ttft_s", "followup_ttft_s", "peak_rss_mb",
                                                      "error") if k in r}
    print(json.dumps(out, indent=1))
    write_json(benchmark_result("settings_sweep"), out)


if __name__ == "__main__":
    main()
