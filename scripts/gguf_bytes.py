"""GGUF files as editable Python objects, read and written byte by byte, for the fuzzer and the hostile-model tests.

Every field can be set to anything (counts, type codes, string lengths, tensor offsets), which gguf-py's writer
refuses to do; and it shares no code with moondream_cpp's own reader, so it checks that reader rather than copying
it. A value that is not a plain Python value is written as `Raw` bytes, as is.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import GGUFValueType as T

SCALAR = {T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i", T.FLOAT32: "f",
          T.BOOL: "B", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d"}
ALIGNMENT_KEY = "general.alignment"


@dataclass
class Raw:
    """Bytes written in place of a value (or a key, a name): whatever a well-formed writer would never write."""

    data: bytes


@dataclass
class KV:
    key: str | Raw
    vtype: int
    value: object  # int, float, bool, str, list (arrays), or Raw
    sub: int | None = None  # array element type


@dataclass
class Tensor:
    name: str | Raw
    ne: list[int]  # ggml order
    ttype: int
    offset: int  # from the start of the data section


@dataclass
class GGUF:
    kvs: list[KV]
    tensors: list[Tensor]
    data: bytes  # the data section
    version: int = 3
    n_kv: int | None = None  # written instead of len(kvs) when set
    n_tensors: int | None = None
    tail: bytes = b""  # appended after the data section
    cut: int | None = None  # the file ends after this many bytes

    def kv(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key), None)

    def set(self, key: str, vtype: int, value, sub: int | None = None) -> None:
        old = self.kv(key)
        if old is None:
            self.kvs.append(KV(key, vtype, value, sub))
        else:
            old.vtype, old.value, old.sub = vtype, value, sub

    @property
    def alignment(self) -> int:
        kv = self.kv(ALIGNMENT_KEY)
        ok = kv is not None and kv.vtype == T.UINT32 and isinstance(kv.value, int) and kv.value > 0
        return kv.value if ok and kv.value & (kv.value - 1) == 0 else 32

    def tensor_bytes(self) -> dict[str, bytes]:
        """Each tensor's bytes as laid out now (by offset and the size its shape and type give)."""
        return {t.name: self.data[t.offset: t.offset + nbytes(t.ne, t.ttype)] for t in self.tensors}

    def relayout(self, contents: dict[str, bytes] | None = None) -> None:
        """Lay the tensors out again, in order, each padded to the alignment: consistent offsets after a change of
        shape, type, or the tensor list. `contents`: bytes per tensor name (default: the current bytes), cut or
        zero-padded to the size each tensor's shape and type need."""
        contents = self.tensor_bytes() if contents is None else contents
        align, out = self.alignment, bytearray()
        for t in self.tensors:
            need = nbytes(t.ne, t.ttype)
            blob = contents.get(t.name, b"")[:need]
            t.offset = len(out)
            out += blob + bytes(need - len(blob))
            out += bytes(-len(out) % align)
        self.data = bytes(out)


def nbytes(ne: list[int], ttype: int) -> int:
    """The size of a tensor of shape `ne` and type `ttype` (0 for a type or shape that has none)."""
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
    except (ValueError, KeyError):
        return 0
    n = 1
    for d in ne:
        n *= max(d, 0)
    return n // block * size if n < 1 << 40 else 0


def _str(s: str | Raw) -> bytes:
    if isinstance(s, Raw):
        return s.data
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(vtype: int, value, sub: int | None) -> bytes:
    if isinstance(value, Raw):
        return value.data
    if vtype == T.STRING:
        return _str(value)
    if vtype == T.ARRAY:
        items = b"".join(_value(sub, v, None) for v in value)
        return struct.pack("<IQ", sub, len(value)) + items
    fmt = SCALAR[T(vtype)]
    if fmt in "fd":
        return struct.pack("<" + fmt, float(value))
    bits = struct.calcsize(fmt) * 8
    return struct.pack("<" + fmt.upper(), int(value) % (1 << bits))  # any integer, wrapped to the field's width


def dumps(g: GGUF) -> bytes:
    out = bytearray(b"GGUF")
    n_tensors = len(g.tensors) if g.n_tensors is None else g.n_tensors
    n_kv = len(g.kvs) if g.n_kv is None else g.n_kv
    out += struct.pack("<IQQ", g.version % (1 << 32), n_tensors % (1 << 64), n_kv % (1 << 64))
    for kv in g.kvs:
        out += _str(kv.key) + struct.pack("<I", kv.vtype % (1 << 32)) + _value(kv.vtype, kv.value, kv.sub)
    for t in g.tensors:
        out += _str(t.name) + struct.pack("<I", len(t.ne))
        out += b"".join(struct.pack("<Q", d % (1 << 64)) for d in t.ne)
        out += struct.pack("<IQ", t.ttype % (1 << 32), t.offset % (1 << 64))
    out += bytes(-len(out) % g.alignment)
    out += g.data + g.tail
    return bytes(out if g.cut is None else out[: g.cut])


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v

    def string(self) -> str:
        n = self.take("Q")
        self.pos += n
        return self.buf[self.pos - n: self.pos].decode("utf-8")

    def value(self, vtype: int):
        if vtype == T.STRING:
            return self.string(), None
        if vtype == T.ARRAY:
            sub, n = self.take("I"), self.take("Q")
            return [self.value(sub)[0] for _ in range(n)], sub
        v = self.take(SCALAR[T(vtype)])
        return (bool(v) if vtype == T.BOOL else v), None


def loads(buf: bytes) -> GGUF:
    """A well-formed GGUF file (the demo pair) as a GGUF object."""
    r = _Reader(buf)
    if buf[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    r.pos = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    kvs = []
    for _ in range(n_kv):
        key, vtype = r.string(), r.take("I")
        value, sub = r.value(vtype)
        kvs.append(KV(key, vtype, value, sub))
    tensors = []
    for _ in range(n_tensors):
        name, n_dims = r.string(), r.take("I")
        ne = [r.take("Q") for _ in range(n_dims)]
        tensors.append(Tensor(name, ne, r.take("I"), r.take("Q")))
    g = GGUF(kvs, tensors, b"", version)
    start = r.pos + (-r.pos % g.alignment)
    g.data = buf[start:]
    return g
