"""The 2025 image path: overlap crops (moondream_cpp/crops.py), each through llama.cpp's vision tower (the mmproj's
pass-through projector hands out the tower's features), then reconstruction, pooling and the 2304-wide projector in
numpy (moondream_cpp/multicrop.py). docs/architecture.md §9."""
from __future__ import annotations

import hashlib

import numpy as np

from . import spec2025
from .crops import CropGeometry, Crops, check_max_crops, overlap_crops
from .errors import ModelFileError, MoondreamError
from .image import load_image
from .multicrop import EmbedTimings, Projector, image_embeddings
from .vision import EncodedImage, Vision


def geometry_of(mm_info) -> CropGeometry:
    """The crop size, patch size and margin of a checked 2025 mmproj (clip.vision.image_size, .patch_size and
    moondream.vision.overlap_margin)."""
    try:
        return CropGeometry(mm_info.crop_size, mm_info.patch_size, mm_info.overlap_margin)
    except ValueError as e:  # gguf_check refuses such files first; this guards an MmprojInfo made elsewhere
        raise ModelFileError(f"{mm_info.file.path}: {e}; convert the checkpoint again") from None


class MultiCropVision:
    def __init__(self, vision: Vision, mm_info, max_crops: int | None = None):
        keys = mm_info.file.keys
        self.vision = vision
        self.feature_length = int(keys.get(spec2025.MD_FEATURE_LENGTH, 0))
        if not keys.get(spec2025.MD_PASSTHROUGH) or self.feature_length <= 0:
            raise ModelFileError(f"{mm_info.file.path} is not a 2025 moondream mmproj (no pass-through projector); "
                                 "convert the checkpoint again with this version of moondream-cpp")
        self.geometry = geometry_of(mm_info)
        self.grid, self.margin = self.geometry.grid, self.geometry.margin
        # the model's own most (its mmproj says, never above upstream's 12) is the default and the limit of the load
        self.model_max_crops = min(int(mm_info.max_crops), spec2025.MAX_CROPS)
        self.max_crops = self.model_max_crops if max_crops is None else check_max_crops(
            max_crops, self.model_max_crops, f"this model's limit, from its mmproj's {spec2025.MD_MAX_CROPS}")
        self.projector = Projector(mm_info.file.path)
        self.last_timings: tuple | None = None  # (key, EmbedTimings, tiling) of the last image encoded

    def crops_of(self, image, max_crops: int | None = None) -> tuple[Crops, str]:
        """The crops of a path, bytes, PIL image or array, and their hash (the image cache key: equal crops make
        equal embeddings). max_crops: fewer than the load's limit (by default the model's) for this image."""
        if max_crops is not None and check_max_crops(max_crops) > self.max_crops:
            if self.max_crops == self.model_max_crops:
                why = f"this model's limit of {self.max_crops} (its mmproj's {spec2025.MD_MAX_CROPS})"
            else:
                why = (f"the limit of {self.max_crops} this model was loaded with (--max-crops; the model's own is "
                       f"{self.model_max_crops})")
            raise MoondreamError(f"max_crops {max_crops} is over {why}; ask for at most {self.max_crops}")
        crops = overlap_crops(load_image(image), max_crops or self.max_crops, geometry=self.geometry)
        h = hashlib.sha256(repr(crops.tiling).encode())
        h.update(crops.global_crop.tobytes())
        if crops.tiling != (1, 1):
            h.update(crops.local.tobytes())
        return crops, "mc" + h.hexdigest()[:30]

    def encode(self, crops: Crops, key: str) -> EncodedImage:
        size = self.geometry.crop_size
        if crops.global_crop.shape != (size, size, 3) or crops.local.shape[1:] != (size, size, 3):
            raise MoondreamError(f"these crops are {crops.global_crop.shape[0]} px, but this model reads {size} px "
                                 "crops: prepare the image with the model that encodes it")
        timings = EmbedTimings()
        with self.vision.session() as encode_crop:
            emb = image_embeddings(crops, encode_crop, self.projector, self.feature_length, self.geometry.margin,
                                   self.geometry.grid, timings)
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
