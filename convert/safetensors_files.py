"""The tensors of .safetensors shards as read-only memory maps, their headers checked as strictly as the safetensors
library checks them: every tensor's byte range is exactly what its shape and dtype take, the ranges tile the data
section with no gap or overlap, and the data ends where the file does. A header that lies (an oversize shape) would
otherwise read the next tensor's bytes as its own."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from moondream_cpp.errors import CheckpointError

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
MAX_HEADER = 100_000_000  # the safetensors library's own limit


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_header(f: Path) -> tuple[int, dict[str, tuple[str, list[int], int, int]]]:
    """(where the data starts, {name: (dtype, shape, absolute offset, bytes)}) of one shard, checked."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{f} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or n > size - 8:
            raise CheckpointError(f"{f} is not a valid safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{f} has a corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{f} has a corrupt safetensors header: not a JSON object")
    base, entries = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = (info.get(k) for k in ("dtype", "shape", "data_offsets")) if isinstance(info, dict) \
            else (None, None, None)
        if not (isinstance(shape, list) and all(map(_is_count, shape)) and isinstance(offsets, list)
                and len(offsets) == 2 and all(map(_is_count, offsets)) and offsets[0] <= offsets[1]):
            raise CheckpointError(f"{f}: tensor {name} has a malformed entry in the header: {str(info)[:120]}")
        if dtype not in DTYPES:
            raise CheckpointError(f"{f}: tensor {name} has unsupported dtype {dtype}")
        want = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
        if offsets[1] - offsets[0] != want:
            raise CheckpointError(f"{f}: tensor {name} of shape {shape} ({dtype}) needs {want} bytes but its header "
                                  f"gives it {offsets[1] - offsets[0]}; the file is corrupt")
        entries[name] = (dtype, shape, base + offsets[0], want)
    end = base
    for name, (_, _, start, nbytes) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if start != end:
            raise CheckpointError(f"{f}: tensor {name} starts at byte {start}, expected {end} (tensors overlap or "
                                  "leave a gap); the file is corrupt")
        end = start + nbytes
    if end != size:
        raise CheckpointError(f"{f} is truncated or has trailing bytes: its tensors end at byte {end}, the file at "
                              f"{size}")
    return base, entries


class SafetensorsFiles:
    """Tensors of one or more .safetensors shards, each a read-only np.memmap view (nothing is read up front)."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, tuple[Path, str, list[int], int, int]] = {}
        for f in files:
            for name, (dtype, shape, offset, nbytes) in read_header(f)[1].items():
                if name in self._where:
                    raise CheckpointError(f"tensor {name} is in two shards ({self._where[name][0].name}, {f.name})")
                self._where[name] = (f, dtype, shape, offset, nbytes)

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name][2])

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (a fresh array; the memmap view is dropped right after)."""
        shape = self.shape(name)
        return self.get_rows(name, 0, shape[0] if shape else 1).reshape(shape)

    def get_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of the tensor's first dimension as float32, flat; only those bytes are mapped and read."""
        path, dtype, shape, offset, nbytes = self._where[name]
        row = math.prod(shape[1:]) if len(shape) > 1 else 1
        item = np.dtype(DTYPES[dtype]).itemsize
        count = (stop - start) * row
        if count == 0:
            return np.zeros(0, np.float32)
        raw = np.memmap(path, dtype=DTYPES[dtype], mode="r", offset=offset + start * row * item, shape=(count,))
        if dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)
        del raw
        return out
