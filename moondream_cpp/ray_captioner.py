"""What one Ray worker runs: a model loaded once that turns an image (a local path, an fsspec URL, or bytes) into the
record a batch run writes, and the image list of a run that may hold URLs. No import of ray here: the same class is
the Ray Data entry and the body of moondream_cpp/ray_batch.py's actors.

    import ray
    from moondream_cpp.ray_captioner import Captioner
    ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)
    ds = ds.map_batches(Captioner, concurrency=4, num_cpus=2, batch_size=8,
                        fn_constructor_kwargs={"text": "/models/text.gguf", "mmproj": "/models/mmproj.gguf",
                                               "n_threads": 2})
    ds.write_json("s3://bucket/captions/")
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable

from .batch import IMAGE_SUFFIXES, asked_question, collect_images, image_record
from .errors import ImageError, MoondreamError
from .options import GenerationOptions
from .records import is_url

RECORD_FIELDS = ("path", "question", "model", "answer", "finish_reason", "timings", "error")


def collect_sources(inputs: Iterable[str]) -> list[tuple[str, str]]:
    """(record path, where to read it) of every image: local inputs as collect_images finds them (read at their
    absolute path, since a Ray worker runs elsewhere), fsspec URLs (s3://, gs://, file://, ...) walked or globbed
    as the local ones are and kept as URLs. Sorted, without duplicates."""
    inputs = [str(x) for x in inputs]
    out = {str(p): str(p.resolve()) for p in collect_images([x for x in inputs if not is_url(x)])}
    for url in (x for x in inputs if is_url(x)):
        out.update((u, u) for u in _list_url(url))
    return sorted(out.items())


def _list_url(url: str) -> list[str]:
    fs, path = _filesystem(url)
    try:
        if fs.isdir(path):
            found = [p for p in fs.find(path) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        elif glob.has_magic(path):
            found = [p for p in fs.glob(path) if Path(p).suffix.lower() in IMAGE_SUFFIXES and fs.isfile(p)]
        elif fs.exists(path):
            found = [path]
        else:
            raise ImageError(f"{url}: no such image file, directory or pattern")
    except OSError as e:
        raise ImageError(f"{url} could not be listed ({e}); check the URL and its credentials") from None
    return [fs.unstrip_protocol(p) for p in found]


def _filesystem(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:  # fsspec names the package that reads this protocol (s3fs, gcsfs, ...)
        raise MoondreamError(f"{url}: {e} (on the driver and every Ray worker)") from None
    except ValueError as e:
        raise MoondreamError(f"{url}: not a URL fsspec can read ({e})") from None


def read_source(where: str) -> str | bytes:
    """What the model reads: a local path as it is (the image reader names it in its errors), a URL's bytes."""
    if not is_url(where):
        return where
    fs, path = _filesystem(where)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError) as e:
        raise ImageError(f"{where} could not be read ({type(e).__name__}: {e})") from None


class Captioner:
    """One model, loaded once and kept in batch mode, that makes one batch record per image.

    As a Ray Data map_batches class it takes batches with a "bytes" column (the image file's bytes) and a "path"
    column (read_binary_files(..., include_paths=True) makes both) and returns the record fields as columns
    (RECORD_FIELDS; None where a field does not apply: "error" only for unreadable images)."""

    def __init__(self, text: str, mmproj: str | None = None, *, question: str | None = None, length: str = "normal",
                 max_tokens: int | None = None, n_threads: int | None = None, **load_options):
        from .runtime import Moondream

        self.md = Moondream.load(text, mmproj, n_threads=n_threads, **load_options)
        try:
            self.md.caption_items_check(length)
            self.batch = self.md.batch_mode()
            self.batch.__enter__()  # for the worker's life: each image is asked about once
        except BaseException:
            self.md.close()
            raise
        self.question, self.length = question, length
        self.asked = asked_question(self.md, question, length)
        self.options = GenerationOptions(max_tokens=max_tokens)

    def record(self, path: str, where: str | None = None, data: bytes | None = None) -> dict:
        """The record of the image named `path`, read from `data` if given, else from `where` (default: path)."""
        try:
            image = data if data is not None else read_source(where or path)
        except ImageError as e:
            return {"path": path, "question": self.asked, "model": self.md.name, "error": str(e)}
        rec = image_record(self.md, path, image, self.question, self.length, self.options, self.asked)
        if "error" in rec and isinstance(image, bytes):  # a message about bytes names no file: name it
            rec["error"] = f"{path}: {rec['error']}"
        return rec

    def __call__(self, batch: dict) -> dict:
        recs = [self.record(str(p), data=bytes(b)) for p, b in zip(batch["path"], batch["bytes"])]
        return {k: [r.get(k) for r in recs] for k in RECORD_FIELDS}

    def close(self) -> None:
        if self.md is not None:
            self.batch.__exit__(None, None, None)
            self.md.close()
            self.md = None
