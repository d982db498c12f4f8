"""The 2025 region head (detect/point) in numpy fp32, with weights from the mmproj's md.region.* tensors
(issue 29): Fourier encoders that turn a coordinate or a size into one embedding row, and decoders
that read the last layer's output before output_norm (moondream_cpp/hidden_state.py) and give a value's bin.

Coordinates are 1024 bins, value = bin / 1024. Sizes are 1024 bins per axis, read as bin / 1024 in 2025-01-09 and on a
log2 scale, 2^(10 * bin / 1023 - 10), from 2025-03-27 (spec2025.Revision2025.size_bins).
"""
from __future__ import annotations

import math
import threading

import numpy as np

from . import spec2025
from .errors import ModelFileError
from .gguf_header import HeaderError, read_header
from .multicrop import _read_tensor, gelu_tanh

_PARTS = {  # our short name -> the mmproj tensor
    name.removeprefix("md.region."): name for name in spec2025.REGION_TENSORS.values()
}


def size_value(bins: np.ndarray, rule: str) -> np.ndarray:
    """Size bins -> fractions of the image side, float32 as upstream computes them."""
    bins = np.asarray(bins, np.float32)
    if rule == "linear":
        return bins / np.float32(1024)
    if rule == "log2":
        return np.power(np.float32(2), bins / np.float32(1023) * np.float32(10) - np.float32(10), dtype=np.float32)
    raise ValueError(f"unknown size-bin rule {rule!r}")


class RegionHead:
    """Read (and dequantized) from the mmproj on first use, then kept."""

    def __init__(self, mmproj_path, size_bins: str):
        if size_bins not in ("linear", "log2"):
            raise ValueError(f"unknown size-bin rule {size_bins!r}")
        self.path, self.size_bins = mmproj_path, size_bins
        self._w: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    def weights(self) -> dict[str, np.ndarray]:
        with self._lock:
            if self._w is None:
                self._w = _read_region(self.path)
        return self._w

    @property
    def n_embd(self) -> int:
        return self.weights()["coord_encoder.weight"].shape[0]

    # ------------------------------------------------------------------ encoders: a value -> one embedding row
    def _fourier_linear(self, values, features: str, encoder: str) -> np.ndarray:
        w = self.weights()
        f = (np.float32(2 * math.pi) * np.asarray(values, np.float32)[None, :]) @ w[features]
        f = np.concatenate([np.cos(f), np.sin(f)], axis=-1)  # cos first
        return f @ w[encoder + ".weight"].T + w[encoder + ".bias"]

    def encode_coordinate(self, value: float) -> np.ndarray:
        """[1, n_embd] float32."""
        return self._fourier_linear([value], "coord_features", "coord_encoder")

    def encode_size(self, width: float, height: float) -> np.ndarray:
        return self._fourier_linear([width, height], "size_features", "size_encoder")

    # ------------------------------------------------------------------ decoders: hidden state -> bins
    def _mlp(self, hidden: np.ndarray, name: str) -> np.ndarray:
        w = self.weights()
        x = np.asarray(hidden, np.float32).reshape(1, -1) @ w[name + ".fc1.weight"].T
        x += w[name + ".fc1.bias"]
        out = gelu_tanh(x) @ w[name + ".fc2.weight"].T
        out += w[name + ".fc2.bias"]
        return out[0]

    def coordinate_logits(self, hidden: np.ndarray) -> np.ndarray:
        """[1024] float32 bin logits from the last layer's output (before output_norm)."""
        return self._mlp(hidden, "coord_decoder")

    def size_logits(self, hidden: np.ndarray) -> np.ndarray:
        """[2, 1024]: row 0 width, row 1 height."""
        return self._mlp(hidden, "size_decoder").reshape(2, -1)

    def decode_coordinate(self, hidden: np.ndarray) -> tuple[int, float]:
        """(bin, value in [0, 1023/1024])."""
        logits = self.coordinate_logits(hidden)
        b = int(np.argmax(logits))
        return b, float(np.float32(b) / np.float32(logits.shape[0]))

    def decode_size(self, hidden: np.ndarray) -> tuple[tuple[int, int], tuple[float, float]]:
        """((width bin, height bin), (width, height) as fractions of the image)."""
        bins = np.argmax(self.size_logits(hidden), axis=-1)
        w, h = size_value(bins, self.size_bins)
        return (int(bins[0]), int(bins[1])), (float(w), float(h))


def _read_region(path) -> dict[str, np.ndarray]:
    try:
        entries = {t.name: t for t in read_header(path).tensors}
    except (OSError, HeaderError) as e:
        raise ModelFileError(f"cannot read the region head from {path} ({e}); download or convert the mmproj "
                             "again") from None
    missing = [n for n in _PARTS.values() if n not in entries]
    if missing:
        raise ModelFileError(f"{path} has no region head ({', '.join(missing[:3])}...): convert the checkpoint again "
                             "with this version of moondream-cpp")
    w = {short: _read_tensor(path, entries[name]) for short, name in _PARTS.items()}
    # a [1, n] matrix may be stored as a vector (a quantizing converter drops the unit dimension)
    w["coord_features"] = w["coord_features"].reshape(1, -1)
    w["size_features"] = w["size_features"].reshape(2, -1)
    # the Fourier feature matrices are [inputs, features]; the linear layers torch's [out, in]
    n_embd = w["coord_encoder.weight"].shape[0]
    fits = (w["coord_features"].shape[0] == 1 and w["size_features"].shape[0] == 2
            and w["coord_encoder.weight"].shape[1] == 2 * w["coord_features"].shape[1]
            and w["size_encoder.weight"].shape == (n_embd, 2 * w["size_features"].shape[1])
            and w["coord_decoder.fc1.weight"].shape[1] == n_embd == w["size_decoder.fc1.weight"].shape[1]
            and w["size_decoder.fc2.weight"].shape[0] % 2 == 0)
    if not fits:
        raise ModelFileError(f"the region tensors in {path} do not fit together; convert the checkpoint again")
    return w
