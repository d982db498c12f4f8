"""A fast, defensive GGUF header reader (keys, their exact types, tensor table) that never trusts the file.

gguf-py's GGUFReader takes seconds on a 50k-token vocabulary; this reads the same header in milliseconds.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import GGUFValueType as T

_SCALAR = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i", T.FLOAT32: "f",
           T.BOOL: "?", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d"}
_NP = {T.UINT8: np.uint8, T.INT8: np.int8, T.UINT16: np.uint16, T.INT16: np.int16, T.UINT32: np.uint32,
       T.INT32: np.int32, T.FLOAT32: np.float32, T.BOOL: np.bool_, T.UINT64: np.uint64, T.INT64: np.int64,
       T.FLOAT64: np.float64}


class HeaderError(ValueError):
    pass


@dataclass
class TensorEntry:
    name: str
    ne: tuple[int, ...]  # ggml order (fastest dimension first)
    ggml_type: str
    offset: int  # absolute, in the file
    nbytes: int


@dataclass
class Header:
    version: int
    types: dict  # key -> (GGUFValueType, element type or None)
    values: dict  # key -> python value (lists for arrays; numpy arrays for numeric arrays)
    tensors: list[TensorEntry]


class _Cursor:
    def __init__(self, buf: bytes, complete: bool):
        self.buf, self.pos, self.size, self.complete = buf, 0, len(buf), complete

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.size:
            if not self.complete:
                raise _ShortRead()
            raise HeaderError(f"header runs past the end of the file at byte {self.pos}")
        out = self.buf[self.pos: self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(n))[0]

    def string(self) -> str:
        n = self.unpack("Q")
        return bytes(self.take(n)).decode("utf-8", "replace")


def _value(c: _Cursor, vtype: T):
    if vtype == T.STRING:
        return c.string(), None
    if vtype in _SCALAR:
        return c.unpack(_SCALAR[vtype]), None
    if vtype == T.ARRAY:
        sub = T(c.unpack("I"))
        n = c.unpack("Q")
        if n > 1 << 31:
            raise HeaderError(f"array of {n} items cannot fit in the file")
        if sub == T.STRING:
            return [c.string() for _ in range(n)], sub
        if sub in _NP:
            arr = np.frombuffer(c.take(n * np.dtype(_NP[sub]).itemsize), dtype=_NP[sub]).copy()
            return arr, sub
        raise HeaderError(f"unsupported array element type {sub}")
    raise HeaderError(f"unknown value type {vtype}")


class _ShortRead(HeaderError):
    pass


def read_header(path: Path) -> Header:
    """Parse the header from the file's first bytes, reading more only if the header is longer (big vocabularies)."""
    size = Path(path).stat().st_size
    n = 8 << 20
    while True:
        with open(path, "rb") as fh:
            buf = fh.read(min(n, size))
        try:
            return _parse(buf, complete=len(buf) == size)
        except _ShortRead:
            if len(buf) == size:
                raise HeaderError("the header runs past the end of the file") from None
            n *= 4


def _parse(buf: bytes, complete: bool) -> Header:
    c = _Cursor(buf, complete)
    if bytes(c.take(4)) != b"GGUF":
        raise HeaderError("not a GGUF file")
    version = c.unpack("I")
    if version not in (2, 3):
        raise HeaderError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = c.unpack("Q"), c.unpack("Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise HeaderError("implausible tensor or key count")
    types, values = {}, {}
    for _ in range(n_kv):
        key = c.string()
        try:
            vtype = T(c.unpack("I"))
        except ValueError:
            raise HeaderError(f"key {key} has an unknown value type") from None
        values[key], sub = _value(c, vtype)
        types[key] = (vtype, sub)
    raw = []
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.unpack("I")
        if n_dims > 4:
            raise HeaderError(f"tensor {name} has {n_dims} dimensions")
        ne = tuple(c.unpack("Q") for _ in range(n_dims))
        gtype, offset = c.unpack("I"), c.unpack("Q")
        raw.append((name, ne, gtype, offset))
    align = int(values.get("general.alignment", 32))
    data_start = -(-c.pos // align) * align
    tensors = []
    for name, ne, gtype, offset in raw:
        try:
            qt = GGMLQuantizationType(gtype)
            block, tsize = GGML_QUANT_SIZES[qt]
        except (ValueError, KeyError):
            raise HeaderError(f"tensor {name} has unknown type {gtype}") from None
        n = int(np.prod(ne, dtype=np.int64)) if ne else 1
        if ne and ne[0] % block:
            raise HeaderError(f"tensor {name}: row of {ne[0]} is not a whole number of {qt.name} blocks")
        tensors.append(TensorEntry(name, ne, qt.name, data_start + offset, n // block * tsize))
    return Header(version, types, values, tensors)
