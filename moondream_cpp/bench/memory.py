"""What the machine reads and what a decoded token reads: the two halves of the decode roofline."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np


class ReadProbe:
    """`threads` threads each reading their share of a large array (numpy releases the GIL). By default they count
    the nonzero 64-bit words: a float sum is bound by its own arithmetic (25-28 GB/s here in every round, where this
    read 33-46 and a C AVX-512 loop 34-69; experiments/bandwidth-methods), so decode could beat its roofline."""

    def __init__(self, threads: int, gb: float = 2.0, read=np.count_nonzero, dtype=np.uint64):
        self.array = np.ones(int(gb * 2**30 / 8), dtype)
        self.parts = np.array_split(self.array, threads)
        self.read = read

    def one_pass(self) -> float:
        """Seconds for one read of the whole array."""
        ts = [threading.Thread(target=self.read, args=(p,)) for p in self.parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.perf_counter() - t0

    def gbs(self, seconds: float = 0.0) -> float:
        """Mean read bandwidth over whole passes lasting at least `seconds` (at least one pass)."""
        n, spent = 0, 0.0
        while n == 0 or spent < seconds:
            spent += self.one_pass()
            n += 1
        return n * self.array.nbytes / spent / 1e9


def memory_bandwidth_gbs(threads: int, gb: float = 2.0, read=np.count_nonzero, dtype=np.uint64) -> float:
    """The best of 3 single reads of a `gb` array (ReadProbe)."""
    probe = ReadProbe(threads, gb, read, dtype)
    return max(probe.array.nbytes / probe.one_pass() / 1e9 for _ in range(3))


def decode_bytes(text_gguf: Path, n_ctx_used: int, kv_type: str = "f16") -> int:
    """Bytes one decoded token reads: every weight but the embedding table (one row of it), plus the KV cache."""
    from ..gguf_check import check_text
    from ..gguf_header import read_header
    from ..settings import kv_cache_bytes

    info = check_text(text_gguf)
    weights = sum(t.nbytes for t in read_header(info.file.path).tensors if t.name != "token_embd.weight")
    return weights + kv_cache_bytes(info.n_layer, info.n_embd, n_ctx_used, kv_type)
