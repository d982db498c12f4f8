"""Stream tensors into a GGUF file one at a time, and publish files atomically."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from gguf import GGUFValueType as T
from gguf import GGUFWriter

from moondream_cpp import spec


@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]  # PyTorch order; GGUF stores it reversed
    dtype: type  # np.float32 or np.float16
    load: Callable[[], np.ndarray]  # computes the float32 values only when written
    # a plain cast of a checkpoint tensor: float32 rows start:stop, flat; lets a big tensor be written in slices
    rows: Callable[[int, int], np.ndarray] | None = None


CHUNK_BYTES = 32 * 2**20  # tensors bigger than this (the 51200-row embedding and head) are cast slice by slice


class _RowStream:
    """What GGUFWriter.write_tensor_data needs of a tensor (nbytes, tofile), cast and written a slice at a time, so
    a 420 MB float32 embedding never exists in memory whole."""

    def __init__(self, t: OutTensor):
        self.t = t
        self.nbytes = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize

    def tofile(self, fout) -> None:
        n_rows = self.t.shape[0]
        row_bytes = max(1, self.nbytes // n_rows)
        step = max(1, CHUNK_BYTES // row_bytes)
        for a in range(0, n_rows, step):
            b = min(n_rows, a + step)
            np.ascontiguousarray(self.t.rows(a, b).astype(self.t.dtype, copy=False)).tofile(fout)


def write_gguf(path: Path, arch: str, keys: list[tuple], tensors: list[OutTensor],
               on_tensor: Callable[[str], None] | None = None) -> None:
    """Header and tensor infos first, then each tensor computed, written and freed: memory stays one tensor deep."""
    w = GGUFWriter(path, arch)
    for key, value, vtype, sub in keys:
        if key != "general.architecture":
            w.add_key_value(key, value, vtype, sub)
    for t in tensors:
        nbytes = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
        w.add_tensor_info(t.name, t.shape, np.dtype(t.dtype), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in tensors:
        if t.rows is not None and len(t.shape) > 1 and int(np.prod(t.shape)) * 4 > CHUNK_BYTES:
            w.write_tensor_data(_RowStream(t))  # gguf 0.19's writer only asks for .nbytes and .tofile()
            if on_tensor:
                on_tensor(t.name)
            continue
        data = np.ascontiguousarray(t.load().astype(t.dtype, copy=False))
        if data.shape != tuple(t.shape):
            raise AssertionError(f"{t.name}: computed shape {data.shape} != declared {t.shape}")
        w.write_tensor_data(data)
        del data
        if on_tensor:
            on_tensor(t.name)
    w.close()


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside `final`; renamed onto it only if the block succeeds, removed otherwise."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; the published file gets normal permissions
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def scratch_path(beside: Path) -> Iterator[Path]:
    """A temporary file next to `beside`, always removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=".partial", dir=beside.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def phi2_keys(name: str, file_type, t) -> list[tuple]:
    """The keys llama.cpp's phi2 text model reads (the same for every moondream family); `t`: the text dimensions."""
    return [
        ("general.name", name, T.STRING, None),
        ("general.file_type", file_type, T.UINT32, None),
        ("phi2.context_length", t.n_ctx, T.UINT32, None),
        ("phi2.embedding_length", t.n_embd, T.UINT32, None),
        ("phi2.feed_forward_length", t.n_ff, T.UINT32, None),
        ("phi2.block_count", t.n_layer, T.UINT32, None),
        ("phi2.attention.head_count", t.n_head, T.UINT32, None),
        ("phi2.attention.head_count_kv", t.n_head, T.UINT32, None),
        ("phi2.attention.layer_norm_epsilon", t.eps, T.FLOAT32, None),
        ("phi2.rope.dimension_count", t.rotary_dim, T.UINT32, None),
        ("phi2.rope.freq_base", spec.ROPE_BASE, T.FLOAT32, None),
    ]
