"""The 2025 family's multi-crop preprocessing: a global crop-sized view of the whole image plus up to max_crops
overlapping local crops cut from the image stretched to fit a tiling (docs/architecture.md §9). Pure numpy + PIL.

The local crops overlap by a margin of patches on each inner side; multicrop.reconstruct cuts the margins off again
after the vision tower, so each patch of the stretched image is read once, with context around it. The crop size,
patch size and margin are the model's (CropGeometry, from its mmproj); the defaults are upstream's full size.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from . import spec2025
from .errors import MoondreamError


@dataclass(frozen=True)
class CropGeometry:
    """How a model cuts an image: crop side and patch side in pixels, margin in patches (cut from each inner side of
    a local crop). gguf_check has refused files whose values break the invariants checked here."""

    crop_size: int = spec2025.CROP_SIZE
    patch_size: int = spec2025.PATCH_SIZE
    margin: int = spec2025.OVERLAP_MARGIN

    def __post_init__(self):
        values = (self.crop_size, self.patch_size, self.margin)
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values) \
                or self.patch_size < 1 or self.crop_size < self.patch_size or self.crop_size % self.patch_size \
                or not 0 <= 2 * self.margin < self.crop_size // self.patch_size:
            raise ValueError(f"no crop geometry: crop {self.crop_size!r} px, patch {self.patch_size!r} px, margin "
                             f"{self.margin!r} patches (the crop must be whole patches, the margins less than it)")

    @property
    def grid(self) -> int:
        """Patches per crop side: also the side of the pooled grid, so the image takes grid² prefix rows."""
        return self.crop_size // self.patch_size

    @property
    def margin_px(self) -> int:
        return self.margin * self.patch_size

    @property
    def window_px(self) -> int:
        """The stride between local crops, and what each one contributes."""
        return self.crop_size - 2 * self.margin_px


FULL_SIZE = CropGeometry()
MARGIN_PX = FULL_SIZE.margin_px  # 56 at full size: cut from each inner side of a local crop
WINDOW_PX = FULL_SIZE.window_px  # 266 at full size


@dataclass(frozen=True)
class Crops:
    """What the vision tower reads for one image: the global view first, then the local crops row by row."""

    global_crop: np.ndarray  # uint8 [crop, crop, 3]: the original image stretched to the crop size
    local: np.ndarray  # uint8 [th*tw, crop, crop, 3]: crop (i, j) at index i*tw + j
    tiling: tuple[int, int]  # (rows, columns) of local crops


UPSTREAM_LIMIT = "upstream's default, and the most any model reads"


def check_max_crops(max_crops, limit: int = spec2025.MAX_CROPS, whose: str = UPSTREAM_LIMIT) -> int:
    """max_crops as given by a user (CLI, server): a whole number from 1 to `limit` (upstream's 12 unless a model
    allows fewer)."""
    if (isinstance(max_crops, bool) or not isinstance(max_crops, numbers.Integral)
            or not 1 <= max_crops <= limit):
        raise MoondreamError(f"max_crops must be a whole number from 1 to {limit} ({whose}), not {max_crops!r}; "
                             "fewer crops read the image faster but in less detail")
    return int(max_crops)


def select_tiling(height: int, width: int, max_crops: int = spec2025.MAX_CROPS,
                  geometry: CropGeometry = FULL_SIZE) -> tuple[int, int]:
    """(rows, columns) of local crops for an image of height x width pixels, by upstream's rule on the size less the
    outer margins, in windows of geometry.window_px. The count can exceed max_crops where one side needs very many
    windows (step 3 floors each side separately, never below 1: at full size 400 x 8000 gives (1, 13)); upstream
    does the same."""
    max_crops = check_max_crops(max_crops)
    window = geometry.window_px
    h, w = height - 2 * geometry.margin_px, width - 2 * geometry.margin_px
    if h <= window or w <= window:  # a side of at most one crop: one tile, whatever the other side
        return 1, 1
    min_h, min_w = math.ceil(h / window), math.ceil(w / window)
    if min_h * min_w > max_crops:  # not even the minimum fits: shrink both sides by the same factor
        ratio = math.sqrt(max_crops / (min_h * min_w))
        return max(1, math.floor(min_h * ratio)), max(1, math.floor(min_w * ratio))
    th = max(math.floor(math.sqrt(max_crops * h / w)), min_h)  # tiles of the image's aspect ratio
    tw = max(math.floor(math.sqrt(max_crops * w / h)), min_w)
    if th * tw > max_crops:  # the minimums pushed it over: give back along the longer side
        if tw > th:
            tw = math.floor(max_crops / th)
        else:
            th = math.floor(max_crops / tw)
    return max(1, th), max(1, tw)


def resize_lanczos(image: Image.Image, height: int, width: int) -> np.ndarray:
    """PIL Lanczos (upstream's fallback when pyvips is missing), aspect not kept. uint8 [height, width, 3]. Not the
    default: on enlarged images it is off from what upstream ran (experiments/resize-pil-vs-vips)."""
    if image.size == (width, height):
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)


VIPS_PAD = 3  # edge pixels copied around the image before the bicubic pass: its kernel reaches 2 pixels out


def resize_vips_like(image: Image.Image, height: int, width: int) -> np.ndarray:
    """What pyvips `resize(sx, vscale=sy)` (upstream's first choice) makes, done in PIL: a shrinking axis is box-
    shrunk then Lanczos3-reduced (rows first), like PIL's reducing_gap=2; if either axis grows, libvips then runs a
    bicubic affine that samples input x at X/s - 0.5 on BOTH axes (half a pixel off PIL's centres, and a half-pixel
    shift of an axis not scaled), copying edge pixels outward. experiments/resize-pil-vs-vips measures the match."""
    w, h = image.size
    if height < h:
        image = image.resize((w, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
    if width < w:
        image = image.resize((width, image.height), Image.Resampling.LANCZOS, reducing_gap=2.0)
    if height > h or width > w:
        w0, h0 = image.size
        p = VIPS_PAD
        padded = Image.fromarray(np.pad(np.asarray(image), ((p, p), (p, p), (0, 0)), mode="edge"))
        # PIL samples output X at (X + .5) * w0 / width + box_x0 - .5: box_x0 = p - .5 * w0 / width gives X / s - .5
        x0, y0 = p - 0.5 * w0 / width, p - 0.5 * h0 / height
        image = padded.resize((width, height), Image.Resampling.BICUBIC, box=(x0, y0, x0 + w0, y0 + h0))
    return np.asarray(image, dtype=np.uint8)


Resizer = Callable[[Image.Image, int, int], np.ndarray]


def overlap_crops(rgb, max_crops: int = spec2025.MAX_CROPS, resize: Resizer | None = None,
                  geometry: CropGeometry = FULL_SIZE) -> Crops:
    """The global crop and the local crops of an RGB image (uint8 [H, W, 3] array or an RGB PIL image).

    The local crops are crop-sized windows at (i*window, j*window) of the whole image stretched to
    (th*window + 2*margin, tw*window + 2*margin) pixels (full size: 378² at multiples of 266 of th*266+112 by
    tw*266+112). With tiling (1, 1) that stretch is the global crop itself, so `local` is a view of it (no second
    resize)."""
    # upstream's resizer is libvips (required up to 2025-04-14): resize_vips_like is what it makes, in PIL
    resize = resize or resize_vips_like
    image = _as_rgb_image(rgb)
    size, step, edges = geometry.crop_size, geometry.window_px, 2 * geometry.margin_px
    th, tw = select_tiling(image.height, image.width, max_crops, geometry)
    global_crop = resize(image, size, size)
    if (th, tw) == (1, 1):
        return Crops(global_crop, global_crop[None], (1, 1))
    stretched = resize(image, th * step + edges, tw * step + edges)
    local = np.zeros((th * tw, size, size, 3), np.uint8)  # zero where a window runs past the stretched image
    for i in range(th):
        for j in range(tw):
            window = stretched[i * step: i * step + size, j * step: j * step + size]
            local[i * tw + j, : window.shape[0], : window.shape[1]] = window
    return Crops(global_crop, local, (th, tw))


def _as_rgb_image(rgb) -> Image.Image:
    if isinstance(rgb, Image.Image):
        if rgb.mode != "RGB":
            raise ValueError(f"overlap_crops needs an RGB image, got mode {rgb.mode} (image.load_image converts)")
        return rgb
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"overlap_crops needs uint8 [H, W, 3] pixels, got {getattr(rgb, 'dtype', type(rgb))} "
                         f"{getattr(rgb, 'shape', '')}")
    return Image.fromarray(rgb)  # uint8 [H, W, 3] is RGB
