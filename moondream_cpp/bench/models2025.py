"""The files the 2025 benchmark measures: a random-weight 2025-04-14 checkpoint (fullsize2025.py), converted by our
converter into the GGUF pairs the variants need (each conversion's peak RSS and time recorded), and the test pictures
of the encode sweep. Made once in the work folder and reused by later runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .fullsize2025 import REVISION, n_params, write_checkpoint
from .processes import peak_of

NAME = "moondream2-bench"
# (label, text type, mmproj type): the default pair, and the 8-bit text with the 16-bit tower
VARIANTS = [("q4_k_m + q8_0 mmproj", "q4_k_m", "q8_0"), ("q8_0 + f16 mmproj", "q8_0", "f16")]
# The encode sweep: (width, height, max_crops) -> our vision passes (a one-tile image is encoded once; upstream
# encodes its local crop, the same pixels, again). Under upstream's 12 crops no image size tiles 2x2 (the rule lands
# on 3x3 or on 1xN with N > 4), so the 5-pass point is a square read with max_crops 4.
SWEEP = [(378, 378, 12), (756, 756, 4), (1536, 768, 12), (1024, 768, 12)]
ANSWER_IMAGE = (1024, 768)  # the cold answer's picture: a 3x4 tiling, 13 passes


def image_path(work: Path, width: int, height: int) -> Path:
    """A width x height test picture (gradients: speed does not depend on what it shows)."""
    path = Path(work) / "images" / f"{width}x{height}.png"
    if not path.exists():
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        y, x = np.mgrid[0:height, 0:width]
        rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
        Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def build_models(work: Path, log: Callable[[str], None], sections: dict | None = None, variants=VARIANTS) -> dict:
    """The checkpoint and the GGUF pair of every variant (reused when present); `sections`: config.json's "config"
    (None: full size). "_paths" maps (kind, type) to each file, kind "text" or "mmproj"."""
    work = Path(work)
    ck, out = work / "checkpoint", work / "gguf"
    if not (ck / "model.safetensors").exists():
        log(f"writing a random {'full-size ' if not sections else ''}2025 checkpoint "
            f"({n_params(sections) * 2 / 1e9:.2f} GB of f16)")
        write_checkpoint(ck, sections)
    record = work / "convert.json"
    info = {"params": n_params(sections), "revision": REVISION,
            "convert": json.loads(record.read_text()) if record.exists() else {}}
    paths = {}
    for _, tq, mq in variants:
        text, mmproj = out / f"{NAME}-text-{tq}.gguf", out / f"{NAME}-mmproj-{mq}.gguf"
        if not (text.exists() and mmproj.exists()):
            log(f"converting to text {tq} + mmproj {mq} (peak RSS measured)")
            rc, peak, secs = peak_of([sys.executable, "-m", "moondream_cpp", "convert", str(ck), "-o", str(out),
                                      "--text-type", tq, "--mmproj-type", mq, "--revision", REVISION,
                                      "--name", NAME])
            if rc != 0:
                raise RuntimeError(f"conversion to {tq} + {mq} failed (exit {rc})")
            info["convert"][f"{tq}+{mq}"] = {"peak_rss_mb": round(peak, 1), "seconds": round(secs, 1)}
            record.write_text(json.dumps(info["convert"]))
        paths[("text", tq)], paths[("mmproj", mq)] = text, mmproj
    info["sizes_mb"] = {f"{k}-{q}": round(p.stat().st_size / 2**20, 1) for (k, q), p in paths.items()}
    info["_paths"] = paths
    return info
