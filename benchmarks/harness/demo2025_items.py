"""The held-out items of the demo v2 accuracy benchmark (benchmarks/demo2025_accuracy.py) and their scores.

Items are training.synth2025's tasks on scenes of one seed, each skill and background set drawn from its own stream
(numpy SeedSequence [seed, skill, set]), so the count of one skill never moves another's items. Every result is scored
on its own (a record); records are summed per skill and per image group.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from training import synth, synth2025

SKILLS = ("query", "caption", "detect", "point")
STYLE_SETS = {"seen": synth.STYLES_TRAIN, "unseen": synth.STYLES_UNSEEN}
# headline metrics per skill, with the targets: (key, bound, "min" or "max")
TARGETS = {"query": [("accuracy_pct", 95.0, "min")], "caption": [("exact_pct", 90.0, "min")],
           "detect": [("recall_pct", 90.0, "min"), ("false_boxes_pct", 5.0, "max")],
           "point": [("inside_pct", 90.0, "min")]}
PER_TYPE_MIN = 85.0  # every question type
REFERENCE_POINTS = 1.0  # llama.cpp within this many percentage points of the PyTorch reference
REGION_NAMES = {"detect": ("recall_pct", "false_boxes_pct", "empty_no_box_pct"),
                "point": ("inside_pct", "false_points_pct", "empty_no_point_pct")}


def items(seed: int, skill: str, n: int, styles: str = "seen") -> Iterator[tuple]:
    """n (image, scene, task) of `skill`, the same for a seed on every machine."""
    rng = np.random.default_rng([seed, SKILLS.index(skill), list(STYLE_SETS).index(styles)])
    made = 0
    while made < n:
        image, scene = synth2025.make_image(rng, STYLE_SETS[styles])
        task = synth2025.heldout_task(rng, scene, skill)
        if task is not None:
            made += 1
            yield image, scene, task


def normalize(answer: str) -> str:
    """Lower case, outer spaces and one final period gone: the exact-match form of a one-word answer."""
    text = answer.strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def score(task: synth2025.Task, scene: synth.Scene, output) -> dict:
    """One item's counts: query/caption `correct` of 1; detect/point objects, found, predicted, false."""
    if task.skill == "query":
        return {"type": task.kind, "correct": int(normalize(output) == normalize(task.answer))}
    if task.skill == "caption":
        return {"type": task.text, "correct": int(synth2025.caption_exact(output, scene))}
    if task.skill == "detect":
        pred = [(b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in output]
        found = synth2025.match_boxes(pred, list(task.boxes))
        n_objects = len(task.boxes)
    else:
        objs = [o for o in scene.objs if synth2025.matches(task.text, o)]
        pred = [(p["x"], p["y"]) for p in output]
        found = synth2025.match_points(pred, objs, scene)
        n_objects = len(objs)
    return {"objects": n_objects, "found": found, "predicted": len(pred), "false": len(pred) - found,
            "empty": int(n_objects == 0), "empty_clean": int(n_objects == 0 and not pred)}


def pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def summary(skill: str, records: list[dict]) -> dict:
    if skill in ("query", "caption"):
        key = "accuracy_pct" if skill == "query" else "exact_pct"
        by = {}
        for t in sorted({r["type"] for r in records}):
            rs = [r for r in records if r["type"] == t]
            by[t] = {"n": len(rs), key: pct(sum(r["correct"] for r in rs), len(rs))}
        return {"n": len(records), key: pct(sum(r["correct"] for r in records), len(records)),
                "by_type" if skill == "query" else "by_length": by}
    total = {k: sum(r[k] for r in records) for k in ("objects", "found", "predicted", "false", "empty", "empty_clean")}
    found, false, empty = REGION_NAMES[skill]
    return {"queries": len(records), "objects": total["objects"], found: pct(total["found"], total["objects"]),
            "predicted": total["predicted"], false: pct(total["false"], total["predicted"]),
            "empty_queries": total["empty"], empty.removesuffix("_pct"): total["empty_clean"],
            empty: pct(total["empty_clean"], total["empty"])}


def report(records: list[dict]) -> dict:
    """skill -> group -> summary. Groups: all (seen backgrounds), 1crop and multicrop (their split by the model's
    tiling), unseen (the unseen backgrounds, all tilings)."""
    out = {}
    for skill in SKILLS:
        mine = [r for r in records if r["skill"] == skill]
        seen = [r for r in mine if r["set"] == "seen"]
        groups = {"all": seen, "1crop": [r for r in seen if r["tiling"] == [1, 1]],
                  "multicrop": [r for r in seen if r["tiling"] != [1, 1]],
                  "unseen": [r for r in mine if r["set"] == "unseen"]}
        out[skill] = {g: summary(skill, rs) for g, rs in groups.items() if rs}
    return out


def difference(a, b):
    """a - b in percentage points for every *_pct present in both (nested like a report)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = {k: difference(a[k], b[k]) for k in a if k in b and (isinstance(a[k], dict) or k.endswith("_pct"))}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    return round(a - b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def checks(rep: dict, diff: dict | None = None) -> dict:
    """The issue's targets on the seen groups (every question type: on all of them together): name -> met (None
    where a group has no items)."""
    out = {}
    for skill, targets in TARGETS.items():
        for group in ("all", "1crop", "multicrop"):
            s = rep.get(skill, {}).get(group)
            for key, bound, kind in targets:
                v = s.get(key) if s else None
                out[f"{skill}.{group}.{key} {'>=' if kind == 'min' else '<='} {bound:g}"] = (
                    None if v is None else (v >= bound if kind == "min" else v <= bound))
            if skill == "query" and s and group == "all":  # a group's rarest types have a handful of items
                worst = min((t["accuracy_pct"] for t in s["by_type"].values()), default=None)
                out[f"query.{group} every type >= {PER_TYPE_MIN:g}"] = None if worst is None else worst >= PER_TYPE_MIN
    if diff is not None:
        gaps = [abs(v) for skill in TARGETS for g in ("all", "1crop", "multicrop")
                for k, v in diff.get(skill, {}).get(g, {}).items() if isinstance(v, (int, float))]
        out[f"reference within {REFERENCE_POINTS:g} point"] = max(gaps, default=0.0) <= REFERENCE_POINTS
    return out


def same_output(a, b) -> bool:
    """Two runs gave the same answer: equal text, or the same regions to 1e-4 of the image side."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return len(a) == len(b) and all(p.keys() == q.keys() and all(abs(p[k] - q[k]) <= 1e-4 for k in p)
                                    for p, q in zip(a, b))
