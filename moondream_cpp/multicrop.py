"""The 2025 family's image embeddings from the vision tower's per-crop features (docs/architecture.md §9): the local
crops' feature maps stitched back into one map (margins cut), pooled to the crop's grid, set beside the global view's
features and put through the 2304-wide projector MLP, all in numpy fp32."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from gguf.quants import dequantize

from . import spec2025
from .crops import Crops
from .errors import MoondreamError, ModelFileError
from .gguf_header import HeaderError, read_header


def reconstruct(local_features: np.ndarray, tiling: tuple[int, int], margin: int = 4) -> np.ndarray:
    """One feature map [(g-2m)*th + 2m, (g-2m)*tw + 2m, C] from the local crops' maps [th*tw, g, g, C] (row-major).

    Neighbouring crops overlap by 2m cells; each keeps its inner part and gives up its margin on every side that has
    a neighbour (cut, not averaged), so every cell comes from the crop that saw it with the most context."""
    th, tw = tiling
    n, g, g2, c = local_features.shape
    if n != th * tw or g != g2 or not 0 <= 2 * margin < g:
        raise ValueError(f"features {local_features.shape} do not fit tiling {tiling} with margin {margin}")
    step = g - 2 * margin
    out = np.empty((step * th + 2 * margin, step * tw + 2 * margin, c), local_features.dtype)
    for r in range(th):
        y0, y1 = (0 if r == 0 else margin), (g if r == th - 1 else g - margin)
        for col in range(tw):
            x0, x1 = (0 if col == 0 else margin), (g if col == tw - 1 else g - margin)
            out[step * r + y0: step * r + y1, step * col + x0: step * col + x1] = \
                local_features[r * tw + col, y0:y1, x0:x1]
    return out


def _bin_means(n: int, out: int) -> np.ndarray:
    """[out, n]: row i averages inputs floor(i*n/out) up to (not including) ceil((i+1)*n/out), PyTorch's adaptive
    bins (they overlap where n is not a multiple of out)."""
    weights = np.zeros((out, n), np.float32)
    for i in range(out):
        start, end = (i * n) // out, -(-((i + 1) * n) // out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: np.ndarray, out: int) -> np.ndarray:
    """[H, W, C] -> [out, out, C] as torch's adaptive_avg_pool2d: a bin's mean is the mean over its rows of the mean
    over its columns, so two small matrix products do it."""
    h, w, c = x.shape
    rows = (_bin_means(h, out) @ x.reshape(h, w * c)).reshape(out, w, c)
    return np.matmul(_bin_means(w, out), rows)  # [out, W] @ [out, W, C] broadcast over the first axis


_FC1_W, _FC1_B, _FC2_W, _FC2_B = spec2025.PROJECTOR_TENSORS.values()


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (upstream's everywhere), in place on a float32 array."""
    inner = x * x
    inner *= 0.044715 * x
    inner += x
    inner *= math.sqrt(2.0 / math.pi)
    np.tanh(inner, out=inner)
    inner += 1.0
    x *= 0.5
    x *= inner
    return x


class Projector:
    """The 2025 projector MLP, [global || pooled] (2C) -> fc1 (inner) -> tanh GELU -> fc2 (D), fp32, with weights
    from the mmproj's md.proj.* tensors: read (and dequantized) on the first call only, then kept."""

    def __init__(self, mmproj_path):
        self.path = mmproj_path
        self._weights = None
        self._lock = threading.Lock()  # the server may embed two images at once; load once

    def load(self) -> "Projector":
        with self._lock:
            if self._weights is None:
                self._weights = _read_projector(self.path)
        return self

    @property
    def in_features(self) -> int:
        return self.load()._weights[0].shape[1]

    @property
    def out_features(self) -> int:
        return self.load()._weights[2].shape[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        w1, b1, w2, b2 = self.load()._weights
        if x.ndim != 2 or x.shape[1] != w1.shape[1]:
            raise ModelFileError(f"the projector in {self.path} takes rows of {w1.shape[1]}, got {x.shape}: the "
                                 "mmproj does not match this model; convert the checkpoint again")
        hidden = np.asarray(x, np.float32) @ w1.T
        hidden += b1
        out = gelu_tanh(hidden) @ w2.T
        out += b2
        return out


def _read_projector(path) -> tuple[np.ndarray, ...]:
    """fc1.weight [inner, 2C], fc1.bias [inner], fc2.weight [D, inner], fc2.bias [D] as float32 (torch order)."""
    try:
        entries = {t.name: t for t in read_header(path).tensors}
    except (OSError, HeaderError) as e:
        raise ModelFileError(f"cannot read the projector from {path} ({e}); download or convert the mmproj "
                             "again") from None
    missing = [n for n in (_FC1_W, _FC1_B, _FC2_W, _FC2_B) if n not in entries]
    if missing:
        raise ModelFileError(f"{path} has no {', '.join(missing)}: it is not a 2025 moondream mmproj; convert the "
                             "checkpoint again")
    w1, b1, w2, b2 = (_read_tensor(path, entries[n]) for n in (_FC1_W, _FC1_B, _FC2_W, _FC2_B))
    if w1.ndim != 2 or w2.ndim != 2 or b1.shape != (w1.shape[0],) or w2.shape[1] != w1.shape[0] \
            or b2.shape != (w2.shape[0],):
        raise ModelFileError(f"the projector tensors in {path} do not fit together (fc1 {w1.shape} + {b1.shape}, fc2 "
                             f"{w2.shape} + {b2.shape}); convert the checkpoint again")
    return w1, b1, w2, b2


def _read_tensor(path, entry) -> np.ndarray:
    """One tensor as float32 in torch order (ggml's ne reversed). Read, not mapped: a file cut short later cannot
    fault the process."""
    raw = np.fromfile(path, np.uint8, count=entry.nbytes, offset=entry.offset)
    if raw.size != entry.nbytes:
        raise ModelFileError(f"{path} is cut short inside tensor {entry.name}; download or convert it again")
    rows = tuple(reversed(entry.ne[1:]))
    try:
        values = dequantize(raw.reshape(*rows, -1), entry.type)
    except NotImplementedError:
        raise ModelFileError(f"tensor {entry.name} in {path} is {entry.type.name}, which cannot be read here; "
                             "convert with another type") from None
    return np.ascontiguousarray(values, np.float32).reshape(*rows, entry.ne[0])


@dataclass
class EmbedTimings:
    """Where one image's embedding time goes (milliseconds), for the runtime's reports."""

    encode_ms: list = field(default_factory=list)  # per vision-tower pass: the global view first, then each local crop
    reconstruct_pool_ms: float = 0.0
    projector_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return sum(self.encode_ms) + self.reconstruct_pool_ms + self.projector_ms


def image_embeddings(crops: Crops, encode_crop: Callable[[np.ndarray], np.ndarray], projector: Projector,
                     feature_length: int, margin: int, grid: int,
                     timings: EmbedTimings | None = None) -> np.ndarray:
    """[grid², D] float32 image embeddings: row i is the projection of [global features_i || pooled local_i].

    encode_crop maps one uint8 crop to [grid², >= feature_length] rows (the pass-through mmproj's output: the tower's
    features first). A local crop with the global view's pixels (tiling (1, 1)) is not encoded again."""
    timings = timings if timings is not None else EmbedTimings()

    def encode(pixels):
        t0 = time.perf_counter()
        rows = np.asarray(encode_crop(pixels))
        timings.encode_ms.append((time.perf_counter() - t0) * 1000)
        if rows.ndim != 2 or rows.shape[0] != grid * grid or rows.shape[1] < feature_length:
            raise MoondreamError(f"the vision tower gave features of shape {rows.shape}, expected {grid * grid} rows "
                                 f"of at least {feature_length}: the mmproj does not match this model; convert the "
                                 "checkpoint again")
        return rows[:, :feature_length]

    global_features = np.array(encode(crops.global_crop), np.float32)
    n = crops.local.shape[0]
    local = np.empty((n, grid, grid, feature_length), np.float32)
    for k in range(n):
        if np.array_equal(crops.local[k], crops.global_crop):
            local[k] = global_features.reshape(grid, grid, feature_length)
        else:
            local[k] = encode(crops.local[k]).reshape(grid, grid, feature_length)
    t0 = time.perf_counter()
    pooled = adaptive_avg_pool(reconstruct(local, crops.tiling, margin), grid).reshape(grid * grid, feature_length)
    del local
    both = np.concatenate([global_features, pooled], axis=1)
    t1 = time.perf_counter()
    embeddings = projector(both)
    timings.reconstruct_pool_ms = (t1 - t0) * 1000
    timings.projector_ms = (time.perf_counter() - t1) * 1000
    return embeddings
