"""The 2025 image path: overlap crops (moondream_cpp/crops.py), each through llama.cpp's vision tower (the mmproj's
pass-through projector hands out the tower's features), then reconstruction, pooling and the 2304-wide projector in
numpy (moondream_cpp/multicrop.py). docs/architecture.md §9."""
from __future__ import annotations

import hashlib

import numpy as np

from . import spec2025
from .crops import Crops, check_max_crops, overlap_crops
from .errors import ModelFileError, MoondreamError
from .image import load_image
from .multicrop import EmbedTimings, Projector, image_embeddings
from .vision import EncodedImage, Vision


class MultiCropVision:
    def __init__(self, vision: Vision, mm_info, max_crops: int | None = None):
        keys = mm_info.file.keys
        self.vision = vision
        self.max_crops = check_max_crops(spec2025.MAX_CROPS if max_crops is None else max_crops)
        self.margin = int(keys.get(spec2025.MD_OVERLAP_MARGIN, spec2025.OVERLAP_MARGIN))
        self.feature_length = int(keys.get(spec2025.MD_FEATURE_LENGTH, 0))
        if not keys.get(spec2025.MD_PASSTHROUGH) or self.feature_length <= 0:
            raise ModelFileError(f"{mm_info.file.path} is not a 2025 moondream mmproj (no pass-through projector); "
                                 "convert the checkpoint again with this version of moondream-cpp")
        self.grid = mm_info.image_size // int(mm_info.file.get("clip.vision.patch_size"))
        self.projector = Projector(mm_info.file.path)
        self.last_timings: tuple | None = None  # (key, EmbedTimings, tiling) of the last image encoded

    def crops_of(self, image, max_crops: int | None = None) -> tuple[Crops, str]:
        """The crops of a path, bytes, PIL image or array, and their hash (the image cache key: equal crops make
        equal embeddings). max_crops: fewer than the model's limit for this image."""
        if max_crops is not None and check_max_crops(max_crops) > self.max_crops:
            raise MoondreamError(f"max_crops {max_crops} is over this model's limit of {self.max_crops} (set when "
                                 "it was loaded: --max-crops)")
        crops = overlap_crops(load_image(image), max_crops or self.max_crops)
        h = hashlib.sha256(repr(crops.tiling).encode())
        h.update(crops.global_crop.tobytes())
        if crops.tiling != (1, 1):
            h.update(crops.local.tobytes())
        return crops, "mc" + h.hexdigest()[:30]

    def encode(self, crops: Crops, key: str) -> EncodedImage:
        timings = EmbedTimings()
        with self.vision.session() as encode_crop:
            emb = image_embeddings(crops, encode_crop, self.projector, self.feature_length, self.margin, self.grid,
                                   timings)
        self.last_timings = (key, timings, crops.tiling)
        return EncodedImage(np.ascontiguousarray(emb, dtype=np.float32), key, timings.total_ms)

    def timings_of(self, key: str) -> dict:
        """Where the last encode of image `key` spent its time (empty when it came from the cache)."""
        if self.last_timings is None or self.last_timings[0] != key:
            return {}
        _, t, tiling = self.last_timings
        return {"image_tiling": list(tiling), "vision_passes": len(t.encode_ms),
                "vision_ms": round(sum(t.encode_ms), 2), "pool_ms": round(t.reconstruct_pool_ms, 2),
                "projector_ms": round(t.projector_ms, 2)}
