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


def mapped_ranges(path: str | os.PathLike) -> list[tuple[int, int, int]]:
    """(address, length, file offset) of this process's mappings of `path`, from /proc/self/maps; [] if none."""
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
                    out.append((a, b - a, int(parts[2], 16)))
    except OSError:
        return []
    return out


def _advise(ranges: list[tuple[int, int]], advice: int) -> bool:
    fn = _madvise()
    return all(fn(a, n, advice) == 0 for a, n in ranges) if ranges else False


def release(path: str | os.PathLike) -> bool:
    """Drop this process's resident pages of the read-only mapping of `path`. True if something was released."""
    return _advise([(a, n) for a, n, _ in mapped_ranges(path)], MADV_DONTNEED)


def retake(path: str | os.PathLike, skip: tuple[int, int] | None = None) -> bool:
    """Fault the mapping of `path` back in at once (faster than page by page during the next decode), except the
    file bytes skip = (offset, length): a tensor read a few rows at a time, like the token embedding."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    ranges = []
    for addr, n, off in mapped_ranges(path):
        parts = [(off, off + n)]
        if skip:
            lo = max(off, (skip[0] + page - 1) // page * page)  # only whole pages inside the skipped bytes
            hi = min(off + n, (skip[0] + skip[1]) // page * page)
            if lo < hi:
                parts = [(off, lo), (hi, off + n)]
        ranges += [(addr + a - off, b - a) for a, b in parts if b > a]
    return _advise(ranges, MADV_POPULATE_READ)
