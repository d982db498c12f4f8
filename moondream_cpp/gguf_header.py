"""A fast, defensive GGUF header reader (keys, their exact types, tensor table) that never trusts the file.

gguf-py's GGUFReader takes seconds on a 50k-token vocabulary; this reads the same header in milliseconds, and once per
file: a load asks for the same header several times (find_pair, check_pair, the token-embedding lookup), so headers are
cached by file identity, and a file replaced or rewritten on disk is parsed again. It refuses what llama.cpp's own
reader (ggml/src/gguf.cpp) refuses, so a file passes here only if llama.cpp can parse it too, and it never reads more
than MAX_HEADER_BYTES whatever the lengths a broken file claims.
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
MAX_HEADER_BYTES = 128 << 20  # a moondream header is under 10 MB; a file claiming more is not read whole to find out


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
    """Reads the header from `buf`, the file's first bytes; `file_size` tells a field that would run past the end of
    the file (refused at once, however large) from one that only runs past the bytes read so far (read more)."""

    def __init__(self, buf: bytes, file_size: int):
        self.buf, self.pos, self.size, self.file_size = buf, 0, len(buf), file_size

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.file_size:
            raise HeaderError(f"the header runs past the end of the file at byte {self.pos}")
        if self.pos + n > self.size:
            raise _ShortRead()
        out = self.buf[self.pos: self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(n))[0]

    def string(self) -> str:
        n = self.unpack("Q")
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise HeaderError(f"a string at byte {self.pos - n} is not UTF-8") from None

    def left(self) -> int:
        return self.file_size - self.pos


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
        if n * (8 if sub == T.STRING else np.dtype(_NP.get(sub, np.uint8)).itemsize) > c.left():
            raise HeaderError(f"an array of {n} items cannot fit in the file")
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


def file_identity(st: os.stat_result) -> tuple:
    """What tells one version of a file from another: device, inode, size, modification time."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def read_header(path: str | os.PathLike) -> Header:
    """The file's header, parsed once per file identity (path, device, inode, size, modification time)."""
    path = Path(path).resolve()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())  # the identity of the bytes read below, not of whatever the path names later
        key = (str(path), *file_identity(st))
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
            return _parse(buf, size)
        except _ShortRead:
            if len(buf) == size:
                raise HeaderError("the header runs past the end of the file") from None
            if n >= MAX_HEADER_BYTES:
                raise HeaderError(f"the header is larger than {MAX_HEADER_BYTES >> 20} MB") from None
            n = min(n * 4, MAX_HEADER_BYTES)


TENSOR_ALIGNMENT = 32  # ggml's: llama.cpp maps tensors in place and aborts on data not at a multiple of it
_MIN_KV_BYTES, _MIN_TENSOR_BYTES = 14, 25  # a key of 1 character and a 1-byte value; a 1-character, 1-D tensor
GGML_MAX_NAME = 64  # ggml's limit on a tensor name's length (the terminating zero included)


def _parse(buf: bytes, file_size: int) -> Header:
    """The header, checked as llama.cpp's gguf reader checks it (ggml/src/gguf.cpp): a file it would refuse is refused
    here too, with the reason, before llama.cpp sees it."""
    c = _Cursor(buf, file_size)
    if bytes(c.take(4)) != MAGIC:
        raise HeaderError("not a GGUF file")
    version = c.unpack("I")
    if version not in _VERSIONS:
        raise HeaderError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = c.unpack("Q"), c.unpack("Q")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES > file_size:
        raise HeaderError(f"{n_kv} keys and {n_tensors} tensors cannot fit in a file of {file_size} bytes")
    types, values = {}, {}
    for _ in range(n_kv):
        key = c.string()
        if not key or key in values:
            raise HeaderError(f"the key {key!r} is empty or given twice")
        try:
            vtype = T(c.unpack("I"))
        except ValueError:
            raise HeaderError(f"key {key} has an unknown value type") from None
        values[key], sub = _value(c, vtype)
        types[key] = (vtype, sub)
    raw = []
    for _ in range(n_tensors):
        name = c.string()
        if not name or len(name.encode()) >= GGML_MAX_NAME:
            raise HeaderError(f"tensor name {name[:80]!r} is empty or too long")
        n_dims = c.unpack("I")
        if n_dims > 4:
            raise HeaderError(f"tensor {name} has {n_dims} dimensions")
        ne = tuple(c.unpack("Q") for _ in range(n_dims))
        gtype, offset = c.unpack("I"), c.unpack("Q")
        raw.append((name, ne, gtype, offset))
    if len({r[0] for r in raw}) != len(raw):
        raise HeaderError("a tensor name is given twice")
    align = values.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if types.get(Keys.General.ALIGNMENT, (T.UINT32,))[0] != T.UINT32 or align <= 0 or align & (align - 1):
        raise HeaderError(f"{Keys.General.ALIGNMENT} is {align!r}, not a power of two stored as UINT32")
    data_start = -(-c.pos // align) * align
    return Header(version, MappingProxyType(types), MappingProxyType(values), _tensors(raw, data_start, align))


def _tensors(raw: list, data_start: int, align: int) -> tuple[TensorEntry, ...]:
    """Tensor entries, each the size its shape and type give, laid out one after the other as gguf.cpp requires."""
    tensors, expected = [], 0
    for name, ne, gtype, offset in raw:
        try:
            qt = GGMLQuantizationType(gtype)
            block, tsize = GGML_QUANT_SIZES[qt]
        except (ValueError, KeyError):
            raise HeaderError(f"tensor {name} has unknown type {gtype}") from None
        n = 1
        for d in ne:
            n *= d
            if n >= 1 << 62 or d >= 1 << 62:
                raise HeaderError(f"tensor {name} has an impossible shape {ne}")
        if ne and ne[0] % block:
            raise HeaderError(f"tensor {name}: row of {ne[0]} is not a whole number of {qt.name} blocks")
        if offset != expected:
            raise HeaderError(f"tensor {name} is at offset {offset} of the data, expected {expected} (right after "
                              "the tensor before it)")
        if (data_start + offset) % TENSOR_ALIGNMENT:
            raise HeaderError(f"tensor {name} starts at byte {data_start + offset} of the file, not a multiple of "
                              f"{TENSOR_ALIGNMENT} ({Keys.General.ALIGNMENT} {align})")
        nbytes = n // block * tsize
        expected += -(-nbytes // align) * align
        tensors.append(TensorEntry(name, ne, qt, data_start + offset, nbytes))
    return tuple(tensors)
