"""Writes to the model store that survive a crash or a power cut, and one pull of a model at a time.

A rename is atomic but not durable by itself: after a power cut the new name can point at a file whose data never
reached the disk (a stored GGUF of zeros or cut short). So each file is fsynced before it is renamed into place, and
the directory that holds the new name is fsynced after. Pulls of one model take turns through an flock: they share
its download area and its store directory.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: pulls of one model are not serialized there
    fcntl = None


def sync(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the names created or renamed in it durable)."""
    if os.name == "nt" and path.is_dir():  # Windows cannot open a directory to fsync it
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data) -> None:
    """Replace path with data as JSON, durably: a reader sees the old file or the new one, never a part of either."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sync(path.parent)


def publish(build: Path, final: Path, trash: Path) -> None:
    """Move the finished directory build to final with one rename, its files and itself synced first and final's
    parent after. An existing final (a damaged model, or one pulled again with --force) is moved to trash first and
    then deleted, so that final is only ever absent or whole."""
    for p in build.iterdir():
        sync(p)
    sync(build)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
    os.replace(build, final)
    sync(final.parent)
    shutil.rmtree(trash, ignore_errors=True)


def try_lock(fd: int) -> bool:
    """Take an exclusive flock on an open file at once; False when another process holds it. Without fcntl
    (Windows) there are no advisory locks and this always succeeds."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def exclusive(lock_file: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive flock on lock_file (created if needed, never deleted: deleting it would let a waiting
    process lock a file nobody else sees). on_wait() is called once when another process holds it, before waiting."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:
        os.close(fd)
        yield
        return
    try:
        if not try_lock(fd):
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
