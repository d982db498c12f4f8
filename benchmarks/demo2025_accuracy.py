"""Accuracy of the demo v2 (the 2025 architecture) on held-out synthetic items, through llama.cpp and optionally the
PyTorch reference on the same items: VQA, short/normal captions, detect and point, each scored on 1-crop and multi-crop
images (the loaded model's own tiling) and on unseen backgrounds. JSON to stdout (and --out), progress to stderr.

    python benchmarks/demo2025_accuracy.py [--text T.gguf --mmproj M.gguf] [--reference [CHECKPOINT_DIR]]

Items: training/synth2025.py's tasks on scenes of --seed (1234: training uses 0 and 10000..10099), drawn as
benchmarks/harness/demo2025_items.py says; scores: synth2025's caption_exact, match_boxes and match_points, and exact
match of the one-word answers. Greedy everywhere; detect/point stop at --max-objects (10) per query. The issue's
targets are in the result's "checks"; a whole run (about 2,900 items) wants a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import benchmark_result  # noqa: E402
from benchmarks.harness.demo2025_items import SKILLS, checks, difference, items, pct, report, same_output, score  # noqa: E402,E501
from moondream_cpp import Moondream, spec2025  # noqa: E402
from moondream_cpp.errors import MoondreamError  # noqa: E402
from moondream_cpp.gguf_header import HeaderError, read_header  # noqa: E402

MAX_TOKENS = {"query": 16, "caption": 80}  # answers are one word; a normal caption of 3 objects is ~30 tokens
BUNDLED = "bundled"
# a scene holds at most 3 objects: a model still going past 10 fails the false-box target whatever it does next, and
# the cap keeps such a model's run from taking 5x longer
MAX_OBJECTS = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bundled_demo2025() -> dict | None:
    """The default bundled model's {"text", "mmproj", "checkpoint" (None where none ships)} when it is of the 2025
    family (the demo v2), else None."""
    from moondream_cpp import gguf_models

    entry = gguf_models.REGISTRY.get(getattr(gguf_models, "DEMO", "moondream-demo"), {})
    text, mmproj = gguf_models.demo_pair()
    try:
        family = read_header(text).values.get(spec2025.MD_FAMILY) if mmproj.exists() else None
    except (OSError, HeaderError):
        family = None
    if family != "2025":
        return None
    # where training/train_demo2025 leaves it, beside the pair, when the registry names none
    ck = gguf_models.HERE / entry["checkpoint"] if entry.get("checkpoint") else text.parent / "checkpoint"
    return {"text": text, "mmproj": mmproj, "checkpoint": ck if ck.is_dir() else None}


class GgufSkills:
    """The public Python API, greedy, with the image cut once per item (its tiling read from the cut)."""

    def __init__(self, md: Moondream, max_objects: int | None):
        self.md, self.max_objects = md, max_objects

    def prepare(self, image):
        prepared = self.md.prepare_image(image)
        return prepared, tuple(prepared.pixels.tiling)

    def query(self, image, question: str, max_tokens: int) -> str:
        return self.md.query(image, question, max_tokens=max_tokens, temperature=0).text

    def caption(self, image, length: str, max_tokens: int) -> str:
        return self.md.caption(image, length, max_tokens=max_tokens, temperature=0).text

    def detect(self, image, obj: str) -> list[dict]:
        return self.md.detect(image, obj, self.max_objects)

    def point(self, image, obj: str) -> list[dict]:
        return self.md.point(image, obj, self.max_objects)


def answer(runner, task, image):
    if task.skill in MAX_TOKENS:
        return getattr(runner, task.skill)(image, task.text, MAX_TOKENS[task.skill])
    return getattr(runner, task.skill)(image, task.text)


def run(runner, plan: list[tuple[str, str, int]], seed: int, label: str) -> dict:
    """Every item of plan [(skill, styles, n)] through runner: records, outputs and tilings in item order."""
    records, outputs, seconds = [], [], {}
    for skill, styles, n in plan:
        t0 = time.perf_counter()
        for i, (image, scene, task) in enumerate(items(seed, skill, n, styles)):
            handle, tiling = runner.prepare(image)
            out = answer(runner, task, handle)
            records.append({"skill": skill, "set": styles, "tiling": list(tiling), **score(task, scene, out)})
            outputs.append(out)
            if (i + 1) % 50 == 0 or i + 1 == n:
                log(f"{label}: {skill} ({styles}) {i + 1}/{n}, {time.perf_counter() - t0:.0f} s")
        seconds[f"{skill}.{styles}"] = round(time.perf_counter() - t0, 1)
    return {"records": records, "outputs": outputs, "seconds": seconds}


def agreement(a: dict, b: dict) -> dict:
    """Per skill: the share of items where both runs gave the same answer."""
    out = {}
    for skill in SKILLS:
        idx = [i for i, r in enumerate(a["records"]) if r["skill"] == skill]
        out[skill] = pct(sum(same_output(a["outputs"][i], b["outputs"][i]) for i in idx), len(idx))
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=Path, help="text GGUF (default: the bundled demo v2, once it is bundled)")
    ap.add_argument("--mmproj", type=Path, help="mmproj GGUF (with --text)")
    ap.add_argument("--reference", "--checkpoint", nargs="?", const=BUNDLED, metavar="CHECKPOINT_DIR",
                    help="also run the PyTorch reference on this HF-layout checkpoint (alone: the bundled demo v2's)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-questions", type=int, default=1000)
    ap.add_argument("--n-captions", type=int, default=500)
    ap.add_argument("--n-detect", type=int, default=500)
    ap.add_argument("--n-point", type=int, default=500)
    ap.add_argument("--n-unseen", type=int, default=100, help="items per skill on unseen backgrounds (0: none)")
    ap.add_argument("--max-objects", type=int, default=MAX_OBJECTS,
                    help=f"detect/point limit per query (default {MAX_OBJECTS}; 0: the revision's, 50)")
    ap.add_argument("--quant", help="a label for the pair's quantization (default: the text GGUF's FFN type)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, help="where the JSON goes too (default: benchmarks/results/<this machine>/"
                                             "demo2025_accuracy.json)")
    a = ap.parse_args(argv)
    a.max_objects = a.max_objects or None
    bundled = bundled_demo2025()
    if (a.text is None) != (a.mmproj is None):
        ap.error("give both --text and --mmproj, or neither (the bundled demo v2)")
    if a.text is None:
        if bundled is None:
            ap.error("no bundled demo v2 yet: give --text and --mmproj")
        a.text, a.mmproj = bundled["text"], bundled["mmproj"]
    if a.reference == BUNDLED:
        if bundled is None or bundled["checkpoint"] is None:
            ap.error("the bundled demo v2 ships no checkpoint: give --reference CHECKPOINT_DIR (the training run's)")
        a.reference = bundled["checkpoint"]
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    counts = {"query": a.n_questions, "caption": a.n_captions, "detect": a.n_detect, "point": a.n_point}
    plan = [(s, "seen", counts[s]) for s in SKILLS] + [(s, "unseen", a.n_unseen) for s in SKILLS if a.n_unseen]
    overrides = {"n_threads": a.threads} if a.threads else {}
    result = {"command": " ".join(["python benchmarks/demo2025_accuracy.py", *(argv if argv is not None
                                                                             else sys.argv[1:])]),
              "seed": a.seed, "counts": {**counts, "unseen_each": a.n_unseen}, "max_tokens": MAX_TOKENS,
              "text": str(a.text), "mmproj": str(a.mmproj)}
    with Moondream.load(a.text, a.mmproj, **overrides) as md:
        if md.family != "2025":
            raise SystemExit(f"{a.text} is a {md.family} model; this benchmark needs a 2025-family pair")
        result.update(revision=md.revision.name, quant=a.quant or md.text_info.quant,
                      max_objects=a.max_objects or md.revision.max_objects)
        t0 = time.perf_counter()
        with md.batch_mode():
            gguf = run(GgufSkills(md, a.max_objects), plan, a.seed, "llama.cpp")
        rep = report(gguf["records"])
        result["llama_cpp"] = {**rep, "seconds": {**gguf["seconds"], "total": round(time.perf_counter() - t0, 1)}}
        result["tilings"] = {f"{t[0]}x{t[1]}": sum(r["tiling"] == list(t) for r in gguf["records"])
                             for t in sorted({tuple(r["tiling"]) for r in gguf["records"]})}
        diff = None
        if a.reference:
            from moondream_cpp.crops import resize_vips_like
            from moondream_cpp.reference.md2025 import Reference2025

            from benchmarks.harness.reference2025_skills import ReferenceSkills

            # the runtime's resizer, so both read the same pixels; crop geometry and all after it are the reference's
            ref = Reference2025.load(a.reference, revision=md.revision.name, resize=resize_vips_like)
            t0 = time.perf_counter()
            torch_run = run(ReferenceSkills(ref, md.tokenize, md.detokenize, a.max_objects), plan, a.seed, "PyTorch")
            ref_rep = report(torch_run["records"])
            diff = difference(rep, ref_rep)
            result["pytorch_reference"] = {**ref_rep, "checkpoint": str(a.reference), "seconds": {
                **torch_run["seconds"], "total": round(time.perf_counter() - t0, 1)}}
            result["difference_points"] = diff  # llama.cpp - PyTorch
            result["same_output_pct"] = agreement(gguf, torch_run)
            result["tiling_mismatches"] = sum(x["tiling"] != y["tiling"]
                                              for x, y in zip(gguf["records"], torch_run["records"]))
    result["checks"] = checks(rep, diff)
    text = json.dumps(result, indent=1)
    print(text)
    out = a.out or benchmark_result("demo2025_accuracy")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    log(f"wrote {out}")
    return result


if __name__ == "__main__":
    try:
        main()
    except MoondreamError as e:
        sys.exit(f"error: {e}")
