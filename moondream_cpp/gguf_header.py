"""A fast, defensive GGUF header reader (keys, their exact types, tensor table) that never trusts the file.

gguf-py's GGUFReader takes seconds on a 50k-token vocabulary; this reads the same header in milliseconds, and once per
file: a load asks for the same header several times (find_pair, check_pair, the token-embedding lookup), so headers are
cached by file identity, and a file replaced or rewritten on disk is parsed again.
"""
from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GGMLQuantizationType, Keys
from gguf import GGUFValueType as T

_SCALAR = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i", T.FLOAT32: "f",
           T.BOOL: "?", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d"}
_NP = {T.UINT8: np.uint8, T.INT8: np.int8, T.UINT16: np.uint16, T.INT16: np.int16, T.UINT32: np.uint32,
       T.INT32: np.int32, T.FLOAT32: np.float32, T.BOOL: np.bool_, T.UINT64: np.uint64, T.INT64: np.int64,
       T.FLOAT64: np.float64}
MAGIC = struct.pack("<I", GGUF_MAGIC)  # b"GGUF"
_VERSIONS = (2, GGUF_VERSION)  # v2 differs from v3 only in byte order support; v1 had 32-bit counts
CACHE_SIZE = 8  # headers kept (a text header with its vocabulary is ~9 MB): a pair, and a directory scan


class HeaderError(ValueError):
    pass


@dataclass(frozen=True)
class TensorEntry:
    name: str
    ne: tuple[int, ...]  # ggml order (fastest dimension first)
    type: GGMLQuantizationType
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def ggml_type(self) -> str:
        """The type's name as llama.cpp prints it ('F16', 'Q8_0', ...)."""
        return self.type.name


@dataclass(frozen=True)
class Header:
    """One parsed header, shared by every caller through the cache: read-only (mappings, tuples, frozen arrays)."""

    version: int
    types: Mapping  # key -> (GGUFValueType, element type or None)
    values: Mapping  # key -> python value (lists for string arrays; read-only numpy arrays for numeric arrays)
    tensors: tuple[TensorEntry, ...]


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
        try:
            sub = T(c.unpack("I"))
        except ValueError:
            raise HeaderError("array of an unknown value type") from None
        n = c.unpack("Q")
        if n > 1 << 31:
            raise HeaderError(f"array of {n} items cannot fit in the file")
        if sub == T.STRING:
            return [c.string() for _ in range(n)], sub
        if sub in _NP:
            arr = np.frombuffer(c.take(n * np.dtype(_NP[sub]).itemsize), dtype=_NP[sub]).copy()
            arr.flags.writeable = False  # shared through the cache
            return arr, sub
        raise HeaderError(f"unsupported array element type {sub.name}")
    raise HeaderError(f"unknown value type {vtype}")


class _ShortRead(HeaderError):
    pass


_cache: OrderedDict[tuple, Header] = OrderedDict()
_cache_lock = threading.Lock()


def read_header(path: str | os.PathLike) -> Header:
    """The file's header, parsed once per file identity (path, device, inode, size, modification time)."""
    path = Path(path).resolve()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())  # the identity of the bytes read below, not of whatever the path names later
        key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
        header = _read(fh, st.st_size)
    with _cache_lock:
        _cache[key] = header
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return header


def _read(fh, size: int) -> Header:
    """Parse the header from the file's first bytes, reading more only if the header is longer (big vocabularies)."""
    n = 8 << 20
    while True:
        fh.seek(0)
        buf = fh.read(min(n, size))
        try:
            return _parse(buf, complete=len(buf) == size)
        except _ShortRead:
            if len(buf) == size:
                raise HeaderError("the header runs past the end of the file") from None
            n *= 4


def _parse(buf: bytes, complete: bool) -> Header:
    c = _Cursor(buf, complete)
    if bytes(c.take(4)) != MAGIC:
        raise HeaderError("not a GGUF file")
    version = c.unpack("I")
    if version not in _VERSIONS:
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
    align = values.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if type(align) is not int or align <= 0:
        raise HeaderError(f"{Keys.General.ALIGNMENT} is {align!r}, not a positive integer")
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
        tensors.append(TensorEntry(name, ne, qt, data_start + offset, n // block * tsize))
    return Header(version, MappingProxyType(types), MappingProxyType(values), tuple(tensors))
