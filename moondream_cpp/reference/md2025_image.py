"""The 2025 moondream2 image geometry, written from the spec (docs/architecture.md §9; the family's preprocessing):
overlap tiling, the global and local crops, and the reconstruction of the local feature maps into one grid.

Independent of the runtime's own crop code on purpose: this is what that code is tested against.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def select_tiling(h: int, w: int, window: int, max_crops: int) -> tuple[int, int]:
    """(rows, columns) of local crops for an image whose margin-reduced size is h x w pixels."""
    if h <= window or w <= window:  # either side fits one window: a single tile
        return 1, 1
    min_h, min_w = math.ceil(h / window), math.ceil(w / window)
    if min_h * min_w > max_crops:  # even the minimum is too many: shrink both in proportion
        r = math.sqrt(max_crops / (min_h * min_w))
        return max(1, math.floor(min_h * r)), max(1, math.floor(min_w * r))
    th = max(math.floor(math.sqrt(max_crops * h / w)), min_h)
    tw = max(math.floor(math.sqrt(max_crops * w / h)), min_w)
    if th * tw > max_crops:  # raising to the minimum overshot: cut the longer side
        if tw > th:
            tw = math.floor(max_crops / th)
        else:
            th = math.floor(max_crops / tw)
    return max(1, th), max(1, tw)


class CropGeometry:
    """Crop size, patch size and margin in one place; `grid` (patches per crop side) is crop // patch, which is
    also the pooled grid (upstream writes the layer count there, equal only at full size)."""

    def __init__(self, crop_size: int = 378, patch_size: int = 14, overlap_margin: int = 4, max_crops: int = 12,
                 resize=None):
        self.crop, self.patch, self.margin, self.max_crops = crop_size, patch_size, overlap_margin, max_crops
        # resize(PIL image, height, width) -> uint8 array; None: PIL Lanczos (the runtime tests pass theirs)
        self.resize = resize or (lambda im, h, w: np.asarray(im.resize((w, h), Image.Resampling.LANCZOS), np.uint8))
        self.grid = crop_size // patch_size
        self.window = self.grid - 2 * overlap_margin  # patches each local crop adds beyond the margins
        self.window_px = self.window * patch_size
        self.margins_px = 2 * overlap_margin * patch_size  # both sides

    def tiling(self, height: int, width: int) -> tuple[int, int]:
        return select_tiling(height - self.margins_px, width - self.margins_px, self.window_px, self.max_crops)

    def crops(self, image) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(global crop [crop, crop, 3] uint8, local crops [n, crop, crop, 3] uint8 row-major, (rows, cols)).

        Both resizes are PIL Lanczos with the aspect ratio NOT kept: the global crop from the original image, the
        local crops cut from the whole image resized to rows*window + margins by cols*window + margins."""
        pil = as_rgb_image(image)
        th, tw = self.tiling(pil.height, pil.width)
        glob = self.resize(pil, self.crop, self.crop)
        size_h, size_w = th * self.window_px + self.margins_px, tw * self.window_px + self.margins_px
        big = self.resize(pil, size_h, size_w)
        locals_ = np.zeros((th * tw, self.crop, self.crop, 3), dtype=np.uint8)  # zero fill where the image is short
        for i in range(th):
            for j in range(tw):
                part = big[i * self.window_px: i * self.window_px + self.crop,
                           j * self.window_px: j * self.window_px + self.crop]
                locals_[i * tw + j, : part.shape[0], : part.shape[1]] = part
        return glob, locals_, (th, tw)

    def reconstruct(self, local_features: torch.Tensor, tiling: tuple[int, int]) -> torch.Tensor:
        """Stitch local feature maps [n, grid*grid, C] (row-major crops) into [rows*window + 2m, cols*window + 2m, C].

        Each tile keeps its outer margins only on the image border; overlaps are cut, not averaged."""
        th, tw = tiling
        g, m, win = self.grid, self.margin, self.window
        maps = local_features.reshape(th * tw, g, g, -1)
        out = local_features.new_zeros((th * win + 2 * m, tw * win + 2 * m, maps.shape[-1]))
        for r in range(th):
            for c in range(tw):
                y0, y1 = (0 if r == 0 else m), (g if r == th - 1 else g - m)
                x0, x1 = (0 if c == 0 else m), (g if c == tw - 1 else g - m)
                out[r * win + y0: r * win + y1, c * win + x0: c * win + x1] = maps[r * tw + c, y0:y1, x0:x1]
        return out

    def pool(self, grid_features: torch.Tensor) -> torch.Tensor:
        """[H, W, C] -> [grid*grid, C], row-major: torch's adaptive average pooling (overlapping bins
        floor(i*H/g) .. ceil((i+1)*H/g))."""
        pooled = torch.nn.functional.adaptive_avg_pool2d(grid_features.permute(2, 0, 1), (self.grid, self.grid))
        return pooled.permute(1, 2, 0).reshape(self.grid * self.grid, -1)


def as_rgb_image(image) -> Image.Image:
    """A PIL image or an HxWx3 uint8 array, as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError("expected a PIL image or an HxWx3 uint8 array")
    return Image.fromarray(arr, "RGB")
