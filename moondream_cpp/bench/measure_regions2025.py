"""detect and point timings of one 2025 GGUF pair in a fresh process; prints one JSON object. Run by
moondream_cpp.bench.regions2025:

    python -m moondream_cpp.bench.measure_regions2025 --text T.gguf --mmproj M.gguf --image ONE.png --image MANY.png
        [--object circle] [--max-objects 8] [--threads N]

For each picture: the caches emptied, detect (cold: the image encoded, its prefix of BOS + image rows evaluated, 730
at full size), then point on the same image (warm: the encoded image and its KV prefix reused, only the template
evaluated); emptied again, point cold, then detect warm. Each call's RegionResult.timings as the runtime reports them
(image ms, prompt ms, objects ms, ms per object) with the object count and why the loop stopped. A skill that found
no object in either call (a model that says EOS at once) is run once more with EOS ignored up to --max-objects, so
its per-object cost is still measured ("forced"). Before the pictures: the region head's first read from the
mmproj, and a first call of each skill on a one-crop picture (llama.cpp faults the weights in), kept out of the
pictures' numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import time
from collections import Counter

import numpy as np

SKILLS = ("detect", "point")
DECODES_PER_OBJECT = {"detect": 3, "point": 2}  # one-row decodes: x, y (and the size for detect)


def uptime() -> str:
    """`uptime`'s line (the machine's load as this run saw it), or the load averages where it is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def file_type(md) -> str:
    """The text file's type as the converter names it (q4_k_m, f16, ...), from general.file_type."""
    from gguf import LlamaFileType

    value = md.text_info.file.get("general.file_type")
    if value is None:
        return md.text_info.quant.lower()
    return LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()


def dominant_type(path) -> str:
    """The tensor type holding most of a GGUF file's bytes (an mmproj states no file type of its own)."""
    from moondream_cpp.gguf_header import read_header

    by_type: Counter = Counter()
    for t in read_header(path).tensors:
        by_type[t.type.name.lower()] += t.nbytes
    return by_type.most_common(1)[0][0]


@contextlib.contextmanager
def eos_ignored(md):
    """The skills' loop runs to max_objects: the revision's EOS id swapped for one no token has, then restored."""
    rev = md.prompting.revision
    md.prompting.revision = dataclasses.replace(rev, eos=-1)
    try:
        yield
    finally:
        md.prompting.revision = rev


@contextlib.contextmanager
def counting_evaluations(md):
    """Positions the prompt evaluation ran (the rest came from the KV cache): md.evaluate's own count, noted."""
    counts, evaluate = [], md.evaluate
    md.evaluate = lambda items, images, **kw: counts.append(evaluate(items, images, **kw)) or counts[-1]
    try:
        yield counts
    finally:
        del md.evaluate  # the class's method again


def call(md, image, obj: str, skill: str, max_objects: int) -> dict:
    """One skill call and what it cost, as the runtime's RegionResult.timings report it, with the positions its
    prompt evaluated."""
    from moondream_cpp import skills2025

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with counting_evaluations(md) as evaluated:
        r = skills2025.run(md, image, obj, skill, max_objects)
    wall_ms = (time.perf_counter() - t0) * 1000
    t, n = r.timings, len(r.objects)
    per = DECODES_PER_OBJECT[skill]
    stopped = "max_objects" if n >= max_objects else (
        "context" if t["prompt_tokens"] + r.decodes + per > md.n_ctx else "eos")
    return {"image_ms": t["image_ms"], "prompt_ms": t["prompt_ms"], "prompt_tokens": t["prompt_tokens"],
            "prompt_evaluated": sum(evaluated), "objects": n, "stopped": stopped, "decodes": r.decodes,
            "objects_ms": t["objects_ms"],
            "ms_per_object": t["ms_per_object"] if n else None, "wall_ms": round(wall_ms, 2),
            "load_average_1m": round(load, 2)}


def head_ms_per_object(head, n_embd: int, rounds: int = 5) -> dict:
    """The numpy region head's share of one object (decoders on a hidden row, encoders of the values), per skill:
    the median over `rounds`. The rest of an object's cost is its one-row decodes."""
    hidden = np.random.default_rng(0).standard_normal(n_embd).astype(np.float32)
    out = {}
    for skill in SKILLS:
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(2):  # x, then y
                head.encode_coordinate(head.decode_coordinate(hidden)[1])
            if skill == "detect":
                head.encode_size(*head.decode_size(hidden)[1])
            times.append((time.perf_counter() - t0) * 1000)
        out[skill] = round(statistics.median(times), 2)
    return out


def picture(md, path, obj: str, max_objects: int) -> dict:
    """Both orders on one picture (cold detect + warm point, then cold point + warm detect), and forced runs where
    a skill found nothing."""
    from moondream_cpp.image import load_image

    img = load_image(path)
    rec: dict = {"image": os.path.basename(str(path)), "size": list(img.size), **{s: {} for s in SKILLS}}
    for first, second in (SKILLS, SKILLS[::-1]):
        md.clear_image_cache()
        md.forget_context()
        rec[first]["cold"] = call(md, img, obj, first, max_objects)
        if "tiling" not in rec:  # the cold encode's breakdown (the runtime keeps the last encode's)
            v = md.multicrop.timings_of(md.prepare_image(img).key)
            rec.update(tiling=v["image_tiling"], vision_passes=v["vision_passes"], vision_ms=v["vision_ms"])
        rec[second]["warm"] = call(md, img, obj, second, max_objects)
    for skill in SKILLS:
        if not any(rec[skill][s]["objects"] for s in ("cold", "warm")):
            with eos_ignored(md):
                rec[skill]["forced"] = call(md, img, obj, skill, max_objects)
    return rec


def measure(a) -> dict:
    from PIL import Image

    from moondream_cpp import Moondream
    from moondream_cpp.errors import MoondreamError

    from .measure2025 import _native_build

    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    before = uptime()
    md = Moondream.load(a.text, a.mmproj, n_threads=a.threads)
    if md.family != "2025":
        raise MoondreamError(f"{a.text} is a {md.family} moondream: detect and point need a 2025 pair")
    t0 = time.perf_counter()
    md.region_head.weights()  # the first detect/point reads (and dequantizes) the head from the mmproj
    head_load_ms = (time.perf_counter() - t0) * 1000
    s = md.image_size
    first = Image.new("RGB", (s, s), (128, 128, 128))
    t0 = time.perf_counter()
    for skill in SKILLS:  # fault the weights in and run each skill's head once: a process's first calls, kept apart
        call(md, first, a.object, skill, 1)
    first_calls_s = time.perf_counter() - t0
    pictures = [picture(md, p, a.object, a.max_objects) for p in a.image]
    return {"model": {"name": md.name, "revision": md.revision.name, "crop": s, "text_type": file_type(md),
                      "mmproj_type": dominant_type(a.mmproj), "text": str(a.text), "mmproj": str(a.mmproj),
                      "n_embd": md.n_embd},
            "started_utc": started, "uptime_before": before, "threads": md.n_threads, "object": a.object,
            "max_objects": a.max_objects, "native_build_utc": _native_build(),
            "head_load_ms": round(head_load_ms, 2), "first_calls_s": round(first_calls_s, 3),
            "head_ms_per_object": head_ms_per_object(md.region_head, md.n_embd), "pictures": pictures,
            "uptime_after": uptime()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", required=True)
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("--image", action="append", required=True)
    ap.add_argument("--object", default="circle")
    ap.add_argument("--max-objects", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    from moondream_cpp.errors import MoondreamError

    try:
        out = measure(ap.parse_args(argv))
    except MoondreamError as e:  # a pair that cannot be measured: the message, as the bench records errors
        out = {"error": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
