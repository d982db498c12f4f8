"""Training data of the demo v2: synthetic scenes, their crops as the 2025 image path cuts them, and the vision
features the (frozen) tower gives them, computed once: [global || pooled local] per image row.

The crops come from the reference's geometry (moondream_cpp/reference/md2025_image.CropGeometry) with the runtime's
resizer, so training sees the pixels llama.cpp will see; the tests prove the runtime's crops equal the reference's.
"""
from __future__ import annotations

import numpy as np
import torch

from moondream_cpp.crops import resize_vips_like
from moondream_cpp.reference.md2025_image import CropGeometry

from . import synth, synth2025


def geometry(dims: dict) -> CropGeometry:
    v = dims["vision"]
    return CropGeometry(v["crop_size"], v["enc_patch_size"], v["overlap_margin"], v["max_crops"], resize_vips_like)


def _chunk(args):
    """Images of one chunk (own RNG stream, so the data do not depend on the number of workers) and their crops."""
    seed, chunk, n, styles, sizes, dims = args
    rng = np.random.default_rng([seed, chunk])
    geo = geometry(dims)
    out = []
    for _ in range(n):
        img, scene = synth2025.make_image(rng, styles, sizes)
        glob, locals_, tiling = geo.crops(img)
        out.append((scene, glob, locals_, tiling))
    return out


@torch.no_grad()
def image_features(model, geo: CropGeometry, items) -> list[torch.Tensor]:
    """Per image [grid*grid, 2*enc_dim]: the global crop's features beside the pooled reconstruction of the local
    ones (a 1x1 tiling's local crop is the global crop itself: encoded once). The crops of all `items`
    ((global, locals, tiling) each) go through the tower as one batch."""
    crops, spans = [], []
    for glob, locals_, tiling in items:
        own = [glob[None]] if tiling == (1, 1) else [glob[None], locals_]
        spans.append((sum(len(c) for c in crops), sum(len(c) for c in own), tiling))
        crops += own
    f = model.encode_crops(torch.from_numpy(np.concatenate(crops)))
    out = []
    for start, n, tiling in spans:
        local = f[start: start + 1] if tiling == (1, 1) else f[start + 1: start + n]
        out.append(torch.cat([f[start], geo.pool(geo.reconstruct(local, tiling))], -1))
    return out


class Features:
    """Scenes and per-image vision features (fp16) for `n` images of `seed` (long side within `sizes` px)."""

    CHUNK = 500

    def __init__(self, model, dims, seed, n, styles=synth.STYLES_TRAIN, workers=2, log=print,
                 sizes=synth2025.IMAGE_SIZES):
        geo = geometry(dims)
        jobs = [(seed, c, min(self.CHUNK, n - c * self.CHUNK), styles, sizes, dims)
                for c in range(-(-n // self.CHUNK))]
        self.scenes, self.tilings, feats = [], [], []
        if workers > 1:
            import multiprocessing as mp

            pool = mp.get_context("fork").Pool(workers - 1)
            parts = pool.imap(_chunk, jobs)
        else:
            pool, parts = None, map(_chunk, jobs)
        for k, part in enumerate(parts):
            for s in range(0, len(part), 32):
                items = part[s: s + 32]
                self.scenes += [it[0] for it in items]
                self.tilings += [it[3] for it in items]
                feats += [f.half() for f in image_features(model, geo, [it[1:] for it in items])]
            log(f"  features: {len(self.scenes)}/{n} images")
        if pool is not None:
            pool.close()
        self.features = torch.stack(feats)

    def extend(self, other: "Features") -> "Features":
        self.scenes += other.scenes
        self.tilings += other.tilings
        self.features = torch.cat([self.features, other.features])
        return self

    def __len__(self):
        return len(self.scenes)

    def multi_crop_share(self) -> float:
        return float(np.mean([t != (1, 1) for t in self.tilings]))
