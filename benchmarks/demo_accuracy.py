"""Accuracy of the bundled demo model on held-out synthetic VQA, through llama.cpp (f16, q8_0, q5_k_m, q4_k_m) and
the PyTorch reference, on the same questions. Prints JSON and writes benchmarks/results/<machine>/demo_accuracy.json.

    python benchmarks/demo_accuracy.py [--n 1000] [--seed 1234]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import benchmark_result, write_json  # noqa: E402
from moondream_cpp import Moondream  # noqa: E402
from moondream_cpp.convert import convert  # noqa: E402
from moondream_cpp.evaluate import evaluate, read_jsonl  # noqa: E402
from moondream_cpp.gguf_models import DEMO_2024, demo_checkpoint, demo_pair  # noqa: E402
from moondream_cpp.image import load_image  # noqa: E402
from training import synth  # noqa: E402


def run_gguf(text, mmproj, rows):
    with Moondream.load(text, mmproj, n_ctx=512) as md:
        t = time.time()
        rep = evaluate(lambda img, q: md.query(img, q, max_tokens=32).text, rows)
        return {**rep.to_json(), "seconds": round(time.time() - t, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-split", type=int, default=300, help="questions in the seen/unseen-background splits")
    a = ap.parse_args()
    text, mmproj = demo_pair(DEMO_2024)
    ck = demo_checkpoint()
    out = {"n": a.n, "seed": a.seed, "command": f"python benchmarks/demo_accuracy.py --n {a.n} --seed {a.seed}"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sets = {}
        for styles in ("all", "train", "unseen"):
            n = a.n if styles == "all" else a.n_split
            sets[styles] = read_jsonl(synth.write_dataset(tmp / styles, a.seed, n, synth.STYLE_SETS[styles]))
        out["f16"] = {s: run_gguf(text, mmproj, rows) for s, rows in sets.items()}
        for q in ("q8_0", "q5_k_m", "q4_k_m"):
            pair = convert(ck, tmp / q, q, "q8_0" if q == "q8_0" else "f16", name="demo")
            out[q] = {"all": run_gguf(pair.text, pair.mmproj, sets["all"])}
        from moondream_cpp.reference import ReferenceMoondream

        ref = ReferenceMoondream(ck)
        t = time.time()
        rep = evaluate(lambda img, q: ref.generate(load_image(img), q, max_tokens=32)[1], sets["all"])
        out["pytorch_reference"] = {"all": {**rep.to_json(), "seconds": round(time.time() - t, 1)}}
    print(json.dumps(out, indent=1))
    write_json(benchmark_result("demo_accuracy"), out)


if __name__ == "__main__":
    main()
