"""Caption (or question) thousands of images into a JSON-lines file that survives crashes.

On resume the images already recorded are skipped; the records file's rules (torn lines, locks, an image that killed
the process) are in moondream_cpp/records.py. Memory stays flat: only the set of finished paths is kept."""
from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import spec
from .errors import ImageError, MoondreamError
from .options import GenerationOptions
from .outputs import writable_dir
from .records import ATTEMPTS, DIED_ON, RecordsFile, same_file_key

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, directories walked recursively for images, glob patterns (** recursive) expanded; sorted,
    without duplicates."""
    out: dict[str, Path] = {}  # real path -> the first spelling met: one file is one image however it is named
    for item in inputs:
        s = str(item)
        p = Path(s).expanduser()
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in files:
                    if Path(f).suffix.lower() in IMAGE_SUFFIXES:
                        q = Path(root) / f
                        out.setdefault(same_file_key(q), q)
        elif p.exists():
            out.setdefault(same_file_key(p), p)
        elif glob.has_magic(s):
            for m in glob.glob(os.path.expanduser(s), recursive=True):
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES:
                    out.setdefault(same_file_key(m), Path(m))
        else:
            raise ImageError(f"{s}: no such image file, directory or pattern")
    return sorted(out.values(), key=str)


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


def asked_question(md, question: str | None, length: str) -> str:
    """A record's "question": a 2024 model's caption is a question; a 2025 model's is a template of its own, named
    here by its length."""
    return question or (spec.caption_question(length) if md.family == "2024" else f"caption ({length})")


def image_record(md, path: str, image, question: str | None, length: str, options: GenerationOptions,
                 asked: str) -> dict:
    """One image's record: the answer (to `question`, else a caption of `length`), or the error that made the image
    unreadable. `image`: what the model reads (a path, bytes, ...); `path`: how the record names it."""
    rec: dict = {"path": path, "question": asked, "model": md.name}
    try:
        a = md.query(image, question, options=options) if question else md.caption(image, length, options=options)
        rec.update({"answer": a.text, "finish_reason": a.finish_reason, "timings": a.timings})
    except ImageError as e:
        rec["error"] = str(e)
    return rec


@dataclass
class BatchReport:
    total: int
    skipped: int  # already in the output
    written: int
    errors: int
    seconds: float
    bad_lines: list[int] = field(default_factory=list)  # lines of the records file that are not records (kept)
    died_on: str | None = None  # the image a killed earlier run was working on


def run_batch(md, images: list[Path], out: Path, *, question: str | None = None, length: str = "normal",
              resume: bool = True, retry_errors: bool = False, options: GenerationOptions | None = None,
              fsync: bool = False, on_record: Callable[[dict], None] | None = None, **option_overrides) -> BatchReport:
    """Answer `question` (default: a caption of `length`) for every image, appending one record per image to out
    (moondream_cpp/records.py). options (or keywords max_tokens, temperature, ...): how each answer is generated."""
    md.caption_items_check(length)  # a length this model has no caption of fails before any image
    # a 2024 model's caption is a question; a 2025 model's is a template of its own, named here by its length
    q = asked_question(md, question, length)
    options = GenerationOptions.of(options, **option_overrides)
    out = Path(out)
    check_output(out)
    t0 = time.perf_counter()
    written = errors = 0
    with RecordsFile(out, fsync) as records:
        if not resume:
            records.start_afresh()
        finished = records.finished(retry_errors)
        wanted = {same_file_key(p): p for p in images}
        died = records.died_on()
        died_key, attempt = (same_file_key(died[0]), died[1]) if died else (None, 0)
        skipped = sum(k in finished.keys for k in wanted)
        if died_key in wanted and died_key not in finished.keys and attempt >= ATTEMPTS and not retry_errors:
            records.append({"path": str(wanted[died_key]), "question": q, "model": md.name, "error": DIED_ON})
            finished.keys.add(died_key)
            written, errors = written + 1, errors + 1
        todo = [p for k, p in wanted.items() if k not in finished.keys and k != died_key]
        if died_key in wanted and died_key not in finished.keys:
            todo.append(wanted[died_key])  # last: an image that killed a run does not hold the others back
        with md.batch_mode():  # each image asked once: no prefix states, vision kept loaded
            for p in todo:
                records.starting(str(p), attempt + 1 if same_file_key(p) == died_key else 1)
                rec = image_record(md, str(p), p, question, length, options, q)
                errors += "error" in rec
                records.append(rec)
                written += 1
                if on_record:
                    on_record(rec)
        records.done()
    return BatchReport(len(wanted), skipped, written, errors, time.perf_counter() - t0,
                       finished.bad_lines, died[0] if died else None)
