"""The JSON-lines records file of a batch run: one whole line per image, appended with single write() calls, locked
against a second run on the same file, and read back on resume without ever losing a finished record.

- Only a torn final line (no newline: a crash mid-write) is cut away. A bad line elsewhere (blank, hand-edited,
  broken) is left in place and reported; every record after it still counts.
- Before each image its path and attempt number go to a sidecar file (`<records>.current`). An image that kills the
  process (out of memory, a native crash) leaves its name there: the next run tries it once more, after every other
  image, and if it dies on it again the image is recorded as an error instead of killing every later resume
  (`retry_errors` tries it again on request). A kill from outside costs that image one attempt, never its record.
- Paths are compared by their real path: one file under two spellings is one image. URLs are compared as written.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .durable import try_lock
from .errors import MoondreamError

DIED_ON = ("the process died twice while working on this image (out of memory or a crash?); run again with "
           "--retry-errors to try it once more")
ATTEMPTS = 2  # deaths on one image before it is recorded as an error


def is_url(source: str | os.PathLike) -> bool:
    """An fsspec URL (s3://, gs://, file://...), not a local path."""
    return "://" in str(source)


def same_file_key(path: str | os.PathLike) -> str:
    """How records compare images: a local path by its real path (whatever the working directory), a URL as it is
    (resolving it as a local path would make it depend on the working directory)."""
    return str(path) if is_url(path) else os.path.realpath(os.path.expanduser(str(path)))


@dataclass
class Finished:
    keys: set[str] = field(default_factory=set)  # real paths with a record
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of lines that are not records


class RecordsFile:
    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        self.path, self.fsync = Path(path), fsync
        self.current = self.path.with_name(self.path.name + ".current")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        if not try_lock(self.fd):
            os.close(self.fd)
            raise MoondreamError(f"another run is writing {self.path}; wait for it, or give --out another file")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start_afresh(self) -> None:
        os.ftruncate(self.fd, 0)
        self.current.unlink(missing_ok=True)

    def finished(self, retry_errors: bool = False) -> Finished:
        """What is recorded; a torn last line is cut off the file first."""
        out = Finished()
        good = 0
        with open(self.path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break  # torn: never completed
                good += len(line)
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
                    if line.strip():
                        out.bad_lines.append(n)
                    continue
                if not (retry_errors and "error" in rec):
                    out.keys.add(same_file_key(rec["path"]))
        if good != os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, good)
        return out

    def died_on(self) -> tuple[str, int] | None:
        """(path, attempt) of the image a killed run was working on, if any."""
        try:
            d = json.loads(self.current.read_text(encoding="utf-8"))
            return (d["path"], int(d["attempt"])) if isinstance(d.get("path"), str) else None
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def starting(self, path: str, attempt: int = 1) -> None:
        tmp = self.current.with_name(self.current.name + ".tmp")
        tmp.write_text(json.dumps({"path": path, "attempt": attempt}), encoding="utf-8")
        os.replace(tmp, self.current)  # never half a name

    def append(self, rec: dict) -> None:
        data = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self.fd)

    def done(self) -> None:
        """The run finished: no image is in progress."""
        self.current.unlink(missing_ok=True)
