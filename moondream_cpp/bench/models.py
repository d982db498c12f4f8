"""The files the benchmark measures: a random-weight full-size moondream1 checkpoint (fullsize.py), converted by our
converter (its peak RSS recorded) and quantized to every type the variants need, plus a test picture. All of it is
made once in the work folder and reused by later runs."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .. import spec
from .fullsize import write_checkpoint
from .processes import peak_of

TEXT_TYPES = ("f16", "q8_0", "q5_k_m", "q4_k_m")
MMPROJ_TYPES = ("f16", "q8_0", "bf16")


def bench_image(work: Path) -> Path:
    """A 640x480 test picture (speed does not depend on what it shows)."""
    image = Path(work) / "photo.png"
    if not image.exists():
        from PIL import Image

        y, x = np.mgrid[0:480, 0:640]
        Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(image)
    return image


def _converted_before_padding(mmproj: Path) -> bool:
    """An mmproj written before the converter padded the vision MLP (spec.VISION_FF_MULTIPLE) measures old code."""
    from ..gguf_header import read_header

    try:
        width = {t.name: t for t in read_header(mmproj).tensors}["v.blk.0.ffn_up.weight"].ne[0]
    except (OSError, KeyError, ValueError):
        return True
    return width % spec.VISION_FF_MULTIPLE != 0


def build_models(work: Path, log: Callable[[str], None]) -> dict:
    """The checkpoint and every GGUF file the variants need (reused when present). Records conversion memory.
    "_paths" maps (kind, type) to each file, kind "text" or "mmproj"."""
    from ..convert.quantize import quantize

    ck = work / "checkpoint"
    info = {}
    if not (ck / "model.safetensors").exists():
        log("writing a random full-size checkpoint (3.7 GB)")
        write_checkpoint(ck)
    f16 = work / "gguf"
    text = f16 / "moondream-bench-text-f16.gguf"
    mmproj = f16 / "moondream-bench-mmproj-f16.gguf"
    if text.exists() and _converted_before_padding(mmproj):
        log("the GGUF files predate the converter's vision MLP padding: converting again")
        shutil.rmtree(f16)
    if not text.exists():
        log("converting to f16 (peak RSS measured)")
        rc, peak, secs = peak_of([sys.executable, "-m", "moondream_cpp", "convert", str(ck), "-o", str(f16),
                                  "--name", "moondream-bench"])
        if rc != 0:
            raise RuntimeError("conversion failed")
        info["convert_f16"] = {"peak_rss_mb": round(peak, 1), "seconds": round(secs, 1)}
        (work / "convert.json").write_text(json.dumps(info["convert_f16"]))
    elif (work / "convert.json").exists():
        info["convert_f16"] = json.loads((work / "convert.json").read_text())
    files = {("text", "f16"): text, ("mmproj", "f16"): mmproj}
    for kind, types in (("text", TEXT_TYPES[1:]), ("mmproj", MMPROJ_TYPES[1:])):
        for q in types:
            dst = f16 / f"moondream-bench-{kind}-{q}.gguf"
            if not dst.exists():
                log(f"quantizing {kind} to {q}")  # bf16 from f16 too: speed does not depend on the values
                tmp = dst.with_suffix(".tmp")
                quantize(files[(kind, "f16")], tmp, q)
                tmp.replace(dst)
            files[(kind, q)] = dst
    info["files"] = {f"{k}-{q}": str(p) for (k, q), p in files.items()}
    info["sizes_mb"] = {f"{k}-{q}": round(p.stat().st_size / 2**20, 1) for (k, q), p in files.items()}
    info["_paths"] = files
    return info
