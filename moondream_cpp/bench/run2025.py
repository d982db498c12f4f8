"""`moondream-cpp bench --family 2025`: the 2025 moondream2 (2025-04-14, random weights) against upstream-style
PyTorch, side by side in one run, every measurement in a fresh process (measure2025.py).

- answers: on a 1024x768 picture (13 crops), each variant's load, cold first answer (encode + prefill + `tokens`
  greedy tokens), another question about the same image, and peak RSS; our GGUF pairs (models2025.VARIANTS) and the
  PyTorch reference in fp32 and bf16, taking turns within each repeat so the shared machine's drift falls on all;
- encode sweep: one image encode per picture of models2025.SWEEP (1, 5 and 9 passes; the 13-pass point is the
  answers' own encode), for our two mmproj types and PyTorch fp32/bf16.

Medians, with each number's range over the repeats ("spread"), and the load average before every measurement;
every run as measured under "runs" (and in the work folder's raw2025.json as it goes).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

from ..outputs import writable_dir
from .models2025 import ANSWER_IMAGE, SWEEP, VARIANTS, build_models, image_path
from .processes import child

TORCH_DTYPES = ("fp32", "bf16")


def summarize(runs: list[dict]) -> dict:
    """The median of every number over the runs without an error, its range ("spread"), how many runs counted, and
    the other fields (the tiling) of the first run."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "no runs"}
    out, spread = {}, {}
    for k, v in ok[0].items():
        values = [r.get(k) for r in ok]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and all(isinstance(x, (int, float)) for x in values):
            out[k] = statistics.median(values)
            spread[k] = [min(values), max(values)]
        else:
            out[k] = v
    out["spread"], out["runs"] = spread, len(ok)
    return out


def run(work: Path, *, repeats: int = 2, sweep_repeats: int = 1, threads: int | None = None, tokens: int = 32,
        with_torch: bool = True, sections: dict | None = None, variants=VARIANTS, torch_dtypes=TORCH_DTYPES,
        answer_image: tuple[int, int] = ANSWER_IMAGE, sweep=SWEEP, timeout: float = 1800,
        log: Callable[[str], None] = lambda s: None) -> dict:
    """Build (or reuse) the models in `work` and measure; the results as bench2025.json holds them. The keywords
    after `sections` (config.json's "config" of a scaled checkpoint; None: full size) narrow the run for tests."""
    from ..runtime import default_threads
    from . import cpu_name, llama_info

    started = time.time()
    work = writable_dir(work, "--work")
    threads = threads or default_threads()
    models = build_models(work, log, sections, variants)
    load_start = [round(x, 2) for x in os.getloadavg()]  # as the measurements start
    paths = models.pop("_paths")
    ck = work / "checkpoint"

    def ours(tq, mq, image, max_crops, encode_only):
        args = ["--engine", "llama", "--text", str(paths[("text", tq)]), "--mmproj", str(paths[("mmproj", mq)]),
                "--image", str(image), "--threads", str(threads), "--tokens", str(tokens),
                "--max-crops", str(max_crops)]
        return child(args + (["--encode-only"] if encode_only else []), timeout=timeout, module="measure2025")

    def torch(dt, image, max_crops, encode_only):
        args = ["--engine", "torch", "--checkpoint", str(ck), "--dtype", dt, "--image", str(image), "--threads",
                str(threads), "--tokens", str(tokens), "--max-crops", str(max_crops)]
        return child(args + (["--encode-only"] if encode_only else []), timeout=timeout, module="measure2025")

    sides = [(label, lambda im, mc, eo, tq=tq, mq=mq: ours(tq, mq, im, mc, eo)) for label, tq, mq in variants]
    if with_torch:
        sides += [(f"pytorch {dt}", lambda im, mc, eo, dt=dt: torch(dt, im, mc, eo)) for dt in torch_dtypes]
    answer_path = image_path(work, *answer_image)
    answers: dict[str, list] = {label: [] for label, _ in sides}
    encodes: dict[str, dict] = {label: {} for label, _ in sides}
    meta = {"machine": {"cpu": cpu_name(), "threads": threads, "cores": os.cpu_count(),
                        "python": platform.python_version(), "llama_cpp": llama_info(), "commit": _commit(),
                        "load_average_start": load_start},
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
            "settings": {"revision": models["revision"], "repeats": repeats, "sweep_repeats": sweep_repeats,
                         "tokens": tokens, "answer_image": f"{answer_image[0]}x{answer_image[1]}",
                         "full_size": not sections, "greedy": True},
            "models": models}
    raw = work / "raw2025.json"  # every run as it comes: assemble() makes the results of an interrupted run from it

    def keep(runs: list, result: dict) -> None:
        runs.append(result)
        raw.write_text(json.dumps({"meta": meta, "started": started, "answers": answers, "encodes": encodes}))

    for r in range(repeats):
        for label, measure in sides:
            log(f"cold answer, {answer_image[0]}x{answer_image[1]}: {label} (repeat {r + 1} of {repeats})")
            keep(answers[label], measure(answer_path, 12, False))
    for r in range(sweep_repeats):
        for w, h, mc in sweep:
            if (w, h) == answer_image and mc == 12:
                continue  # the answers encoded this picture already, each in a fresh process
            for label, measure in sides:
                log(f"encode {w}x{h} (max_crops {mc}): {label} (repeat {r + 1} of {sweep_repeats})")
                keep(encodes[label].setdefault(f"{w}x{h}", []), measure(image_path(work, w, h), mc, True))
    return assemble(meta, answers, encodes, answer_image, sweep, started)


def assemble(meta: dict, answers: dict, encodes: dict, answer_image=ANSWER_IMAGE, sweep=SWEEP,
             started: float | None = None) -> dict:
    """The results from every run (each side's answer runs, and its encode runs by picture): medians and ranges,
    the sweep table's rows (the answer picture's from the answers), the load average now."""
    res_sweep = {}
    fields = ("load_s", "encode_ms", "tiling", "vision_passes", "vision_ms", "vision_ms_per_crop", "pool_ms",
              "projector_ms", "load_average_1m", "peak_rss_mb")
    for label in answers:
        rows = []
        for w, h, mc in sweep:
            runs = answers[label] if (w, h) == tuple(answer_image) and mc == 12 else encodes[label].get(f"{w}x{h}", [])
            s = summarize([{k: v for k, v in x.items() if k in fields or k == "error"} for x in runs])
            rows.append({"image": f"{w}x{h}", "max_crops": mc, **s})
        res_sweep[label] = rows
    machine = {**meta["machine"], "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    return {**meta, "machine": machine, "duration_s": round(time.time() - started, 1) if started else None,
            "answers": {label: summarize(runs) for label, runs in answers.items()}, "encode_sweep": res_sweep,
            "runs": {"answers": answers, "encodes": encodes}}


def _commit() -> str | None:
    """The checkout's commit (None outside one): what code was measured, as helpers keep changing the tree."""
    import subprocess

    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                           cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() or None if p.returncode == 0 else None
