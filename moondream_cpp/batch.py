"""Caption (or question) thousands of images into a JSON-lines file that survives crashes.

Each record is one write() of one whole line, flushed as it completes; on resume the images already recorded are
skipped, and a line torn by a crash mid-write is cut away first, so no record is ever half-written or duplicated.
Memory stays flat: only the set of finished paths is kept."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from . import spec
from .errors import ImageError, MoondreamError
from .options import GenerationOptions
from .outputs import writable_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, directories walked recursively for images, glob patterns (** recursive) expanded; sorted,
    without duplicates."""
    out: dict[str, Path] = {}
    for item in inputs:
        s = str(item)
        p = Path(s).expanduser()
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in files:
                    if Path(f).suffix.lower() in IMAGE_SUFFIXES:
                        q = Path(root) / f
                        out[str(q)] = q
        elif p.exists():
            out[str(p)] = p
        elif glob.has_magic(s):
            for m in glob.glob(os.path.expanduser(s), recursive=True):
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES:
                    out[m] = Path(m)
        else:
            raise ImageError(f"{s}: no such image file, directory or pattern")
    return [out[k] for k in sorted(out)]


def read_done(out: Path, retry_errors: bool = False) -> set[str]:
    """Paths already recorded in `out`; a torn last line (a crash mid-write) is cut off the file."""
    done: set[str] = set()
    if not out.exists():
        return done
    good = 0
    with open(out, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn: never completed
            try:
                rec = json.loads(line)
            except ValueError:
                break
            good += len(line)
            if isinstance(rec, dict) and "path" in rec and not (retry_errors and "error" in rec):
                done.add(rec["path"])
    if good != out.stat().st_size:
        with open(out, "r+b") as f:
            f.truncate(good)
    return done


def check_output(out: Path) -> None:
    """Fail now, before a model loads, if the records file cannot be written (its folder is made if missing)."""
    out = Path(out)
    if out.is_dir():
        raise MoondreamError(f"{out} is a directory; name a file for the records, e.g. {out / 'captions.jsonl'}")
    writable_dir(out.parent, "--out", for_file=True)
    try:  # the folder takes new files; an existing records file must also take appends
        if out.exists():
            os.close(os.open(out, os.O_WRONLY | os.O_APPEND))
    except OSError as e:
        raise MoondreamError(f"cannot write the records file {out} ({e.strerror or e}); choose a writable path "
                             "for --out") from None


@dataclass
class BatchReport:
    total: int
    skipped: int  # already in the output
    written: int
    errors: int
    seconds: float


class _Appender:
    """Whole lines appended with single os.write calls (O_APPEND), so a kill cannot interleave or split records."""

    def __init__(self, path: Path, fsync: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.fsync = fsync

    def write(self, rec: dict) -> None:
        data = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self.fd)

    def close(self):
        os.close(self.fd)


def run_batch(md, images: list[Path], out: Path, *, question: str | None = None, length: str = "normal",
              resume: bool = True, retry_errors: bool = False, options: GenerationOptions | None = None,
              fsync: bool = False, on_record: Callable[[dict], None] | None = None, **option_overrides) -> BatchReport:
    """Answer `question` (default: a caption of `length`) for every image, appending one record per image to out.
    options (or keywords max_tokens, temperature, ...): how each answer is generated (GenerationOptions)."""
    q = question or spec.caption_question(length)
    options = GenerationOptions.of(options, **option_overrides)
    out = Path(out)
    check_output(out)
    if not resume and out.exists():
        out.unlink()
    done = read_done(out, retry_errors) if resume else set()
    todo = [p for p in images if str(p) not in done]
    t0 = time.perf_counter()
    app = _Appender(out, fsync)
    written = errors = 0
    with md.batch_mode(), contextlib.closing(app):  # each image asked once: no prefix states, vision kept loaded
        for p in todo:
            rec: dict = {"path": str(p), "question": q, "model": md.name}
            try:
                a = md.query(p, q, options=options)
                rec.update({"answer": a.text, "finish_reason": a.finish_reason, "timings": a.timings})
            except ImageError as e:
                rec["error"] = str(e)
                errors += 1
            app.write(rec)
            written += 1
            if on_record:
                on_record(rec)
    return BatchReport(len(images), len(images) - len(todo), written, errors, time.perf_counter() - t0)

