"""Hand a mapped file's pages back to the page cache, and take them again (Linux; a no-op elsewhere).

With the vision tower loaded only while it works, the text model's weights (mapped from the GGUF, read-only) are not
needed during an image encode: dropping our mapping of them then means the two are never resident together. The data
stays in the page cache, so taking it back costs minor faults, not disk reads (unless the system needed the memory).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MADV_DONTNEED = 4
MADV_POPULATE_READ = 22  # Linux 5.14+: fault a range in with one call instead of one fault per page

_libc = None


def _madvise():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _libc.madvise


def mapped_ranges(path: str | os.PathLike) -> list[tuple[int, int]]:
    """(start, length) of this process's mappings of `path`, from /proc/self/maps; [] where there is none."""
    if not sys.platform.startswith("linux"):
        return []
    want = os.path.realpath(path)
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n") == want:
                    a, b = (int(x, 16) for x in parts[0].split("-"))
                    out.append((a, b - a))
    except OSError:
        return []
    return out


def _advise(ranges: list[tuple[int, int]], advice: int) -> bool:
    fn = _madvise()
    return all(fn(a, n, advice) == 0 for a, n in ranges) if ranges else False


def release(path: str | os.PathLike) -> bool:
    """Drop this process's resident pages of the read-only mapping of `path`. True if something was released."""
    return _advise(mapped_ranges(path), MADV_DONTNEED)


def retake(path: str | os.PathLike) -> bool:
    """Fault the mapping of `path` back in at once (faster than page by page during the next decode)."""
    return _advise(mapped_ranges(path), MADV_POPULATE_READ)
