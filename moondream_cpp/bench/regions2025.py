"""`moondream-cpp bench --family 2025 --regions`: what detect and point cost on a 2025 GGUF pair, each pair measured
in a fresh process (measure_regions2025.py): image encode, prompt and per-object ms of one call on a one-crop and a
multi-crop picture, cold (image not cached) and warm (a second skill on the same image, its KV prefix reused).

Any 2025 pair: --text/--mmproj, --model (a registry name or a directory), or by default the 2025 bench's own random
full-size pairs (models2025.VARIANTS, built in --work as `--family 2025` builds them). The results go into
bench2025.json's "regions" section, one entry per pair (a later run of another pair adds to it), and with --docs a
table between <!-- bench2025-regions:start --> and <!-- bench2025-regions:end -->.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable

from .measure_regions2025 import DECODES_PER_OBJECT, SKILLS
from .models2025 import ANSWER_IMAGE, NAME, VARIANTS, build_models, image_path
from .processes import child

START, END = "<!-- bench2025-regions:start -->", "<!-- bench2025-regions:end -->"
OWN = "random, full size"  # the weights note of the bench's own pairs
FULL_CROP = 378  # the crop the bench's pictures are sized for; a smaller-crop model gets them scaled down


def default_pictures(work: Path, crop: int) -> list[Path]:
    """A one-crop picture (crop x crop) and the 2025 bench's answer picture (1024x768: 3x4 crops at full size),
    scaled for a model whose crop is not 378 so it still takes several crops."""
    w, h = (round(side * crop / FULL_CROP) for side in ANSWER_IMAGE)
    return [image_path(work, crop, crop), image_path(work, w, h)]


def pairs_of(work: Path, model: str | None, text: Path | None, mmproj: Path | None,
             log: Callable[[str], None]) -> list[tuple[str, Path, Path]]:
    """(weights note, text, mmproj) of each pair to measure."""
    from ..errors import MoondreamError
    from ..gguf_check import find_pair
    from ..store import resolve

    if text or mmproj:
        if not (text and mmproj):
            raise MoondreamError("pass both --text and --mmproj (or --model NAME_OR_DIR)")
        return [("as given", Path(text), Path(mmproj))]
    if model:
        first, second = resolve(model)
        return [(f"--model {model}", *((first, second) if second else find_pair(first)))]
    paths = build_models(work, log)["_paths"]
    return [(OWN, paths[("text", tq)], paths[("mmproj", mq)]) for _, tq, mq in VARIANTS]


def label_of(entry: dict, weights: str) -> str:
    """The model's name, revision and file types (the bench's own pairs: NAME; their general.name is the
    checkpoint folder's)."""
    m = entry["model"]
    name = NAME if weights == OWN else m["name"]
    return f"{name} {m['revision']}, {m['text_type']} + {m['mmproj_type']} mmproj"


def median_of_runs(runs: list):
    """Runs of one pair's measurement (same structure) as one: each number the median over the runs (whole numbers
    stay whole: the lower median), None where every run has None; anything else (text, tilings) the first run's."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: median_of_runs([r[k] for r in runs if k in r]) for k in first}
    if isinstance(first, list) and first and isinstance(first[0], dict):
        return [median_of_runs([r[i] for r in runs]) for i in range(len(first))]
    numbers = [r for r in runs if isinstance(r, (int, float)) and not isinstance(r, bool)]
    if not numbers or len(numbers) < len([r for r in runs if r is not None]):
        return first
    return statistics.median_low(numbers) if all(isinstance(x, int) for x in numbers) else statistics.median(numbers)


def run(pairs: list[tuple[str, Path, Path]], work: Path, *, images: list[Path] | None = None, obj: str = "circle",
        max_objects: int = 8, repeats: int = 1, threads: int | None = None, timeout: float = 1800,
        log: Callable[[str], None] = lambda s: None) -> dict:
    """Measure each pair `repeats` times, the pairs taking turns, each time in a fresh process; {label: entry} as
    bench2025.json's "regions" holds them: the medians, and with several repeats every run under "each_run"."""
    from ..gguf_check import check_mmproj

    runs: dict[int, list] = {i: [] for i in range(len(pairs))}
    for r in range(repeats):
        for i, (_, text, mmproj) in enumerate(pairs):
            pictures = images or default_pictures(work, check_mmproj(mmproj).image_size)
            log(f"detect/point timings: {text.name} + {mmproj.name} on {', '.join(p.name for p in pictures)} "
                f"(repeat {r + 1} of {repeats})")
            args = ["--text", str(text), "--mmproj", str(mmproj), "--object", obj, "--max-objects", str(max_objects)]
            args += [x for p in pictures for x in ("--image", str(p))] + (
                ["--threads", str(threads)] if threads else [])
            runs[i].append(child(args, timeout=timeout, module="measure_regions2025"))
    out = {}
    for i, (weights, text, mmproj) in enumerate(pairs):
        ok = [e for e in runs[i] if "error" not in e]
        if not ok:
            out[f"{text.name} + {mmproj.name}"] = {**runs[i][0], "text": str(text), "mmproj": str(mmproj)}
            continue
        entry = {"weights": weights, **median_of_runs(ok), "runs": len(ok)}
        entry["uptime_after"] = ok[-1]["uptime_after"]
        if len(ok) > 1:
            entry["each_run"] = ok
        out[label_of(entry, weights)] = entry
    return out


def per_object(call: dict | None) -> float | None:
    return call.get("ms_per_object") if call else None


def markdown(regions: dict) -> str:
    """A table row per pair, picture and skill; a line per pair saying where, when and under what load."""
    lines = ["| model | picture (tiling, crops) | skill | cold: encode ms | cold: prompt ms (positions evaluated) | "
             "warm: encode ms | warm: prompt ms (positions evaluated) | objects cold / warm (stop) | ms per object: "
             "cold / warm (numpy head) | one-row decode ms |", "|---" * 10 + "|"]
    notes = []
    for label, e in regions.items():
        if "error" in e:
            lines.append(f"| {label} | error: {e['error']} |" + " |" * 8)
            continue
        for p in e["pictures"]:
            tiling = "x".join(map(str, p["tiling"]))
            for skill in SKILLS:
                c, w, f = p[skill]["cold"], p[skill]["warm"], p[skill].get("forced")
                head = e["head_ms_per_object"][skill]
                per = [x for x in (per_object(c), per_object(w)) if x is not None]
                per_text = " / ".join(f"{x:.0f}" if x is not None else "-" for x in (per_object(c), per_object(w)))
                if f is not None:
                    per_text = f"forced {f['ms_per_object']:.0f}"
                    per = [f["ms_per_object"]]
                decode = (statistics.median(per) - head) / DECODES_PER_OBJECT[skill] if per else None
                found = f"{c['objects']} / {w['objects']} ({c['stopped']} / {w['stopped']})"
                lines.append(
                    f"| {label} ({e['weights']}) | {p['image']} ({tiling}, {p['vision_passes']}) | {skill} | "
                    f"{c['image_ms']:.0f} | {c['prompt_ms']:.0f} ({c['prompt_evaluated']}) | {w['image_ms']:.1f} | "
                    f"{w['prompt_ms']:.0f} ({w['prompt_evaluated']}) | {found} | {per_text} ({head:.1f}) | "
                    f"{'-' if decode is None else f'{decode:.0f}'} |")
        runs = e.get("runs", 1)
        how = "one process" if runs == 1 else f"median of {runs} fresh processes"
        notes.append(f"* {label}: crop {e['model']['crop']}, {e['threads']} threads, started {e['started_utc']} UTC "
                     f"(uptime: `{e['uptime_before']}`); {how}; object \"{e['object']}\", max_objects "
                     f"{e['max_objects']}; region head read from the mmproj in {e['head_load_ms']:.0f} ms on first "
                     f"use; the process's first detect and point calls {e['first_calls_s']:.1f} s (kept out of the "
                     "table).")
    return "\n".join(lines + [""] + notes) + "\n"


def write(regions: dict, results_dir: Path, docs: Path | None, command: str) -> dict:
    """Add `regions` (with the command) to bench2025.json's "regions" section, the rest of the file as it was;
    with `docs`, the whole section's table between START and END (appended where those are missing)."""
    path = results_dir / "bench2025.json"
    results_dir.mkdir(parents=True, exist_ok=True)
    res = json.loads(path.read_text()) if path.exists() else {}
    res["regions"] = {**res.get("regions", {}), **{k: {**v, "command": command} for k, v in regions.items()}}
    path.write_text(json.dumps(res, indent=1) + "\n")
    if docs is not None:
        text = docs.read_text() if docs.exists() else ""
        table = markdown(res["regions"])
        if START in text and END in text:
            text = text[: text.index(START) + len(START)] + "\n" + table + text[text.index(END):]
        else:
            text += f"\n{START}\n{table}{END}\n"
        docs.write_text(text)
    return res["regions"]


def bench(work: Path, results: Path, docs: Path | None, *, model=None, text=None, mmproj=None, images=None,
          max_objects: int = 8, repeats: int = 1, threads: int | None = None,
          log: Callable[[str], None] = lambda s: None) -> dict:
    """What the CLI runs: the pairs, their measurements, the results written; the command as it reads."""
    pairs = pairs_of(work, model, text, mmproj, log)
    regions = run(pairs, work, images=images, max_objects=max_objects, repeats=repeats, threads=threads, log=log)
    failed = [f"{k}: {v['error']}" for k, v in regions.items() if "error" in v]
    if len(failed) == len(regions):  # nothing measured: say why, write nothing
        from ..errors import MoondreamError

        raise MoondreamError("detect/point timings failed: " + "; ".join(failed))
    for f in failed:
        log(f"failed (recorded as an error): {f}")
    options = [f"--model {model}" if model else "", f"--text {text} --mmproj {mmproj}" if text else "",
               *(f"--image {p}" for p in images or ()), f"--max-objects {max_objects}" if max_objects != 8 else "",
               f"--repeats {repeats}" if repeats != 1 else "", f"--threads {threads}" if threads else ""]
    cmd = " ".join(["moondream-cpp bench --family 2025 --regions", *filter(None, options)])
    return write(regions, results, docs, cmd)
