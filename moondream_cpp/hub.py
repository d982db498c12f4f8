"""One file from the Hugging Face hub into the store's work area: resumable, checked against its size and hashes.

Only `pull` uses this module, and nothing else in moondream-cpp touches the network. huggingface_hub is used through
its public API: hf_hub_url and get_hf_file_metadata say where the file is and what it must be (its size; the ETag,
which is the sha256 of an LFS file and the git blob sha1 of a small file kept in git itself), and get_session()
fetches the bytes. The file is checked against the sha256 the caller pins (the registry's, else the store's lock
file's) and against the hub's ETag, whichever kind it is. Not hf_hub_download: it resumes only
from its own bookkeeping (the hub cache, or local_dir's .cache/huggingface/download/*.incomplete), in 10 MiB chunks,
while a pull resumes from its own .part file, written in 1 MiB steps, so a killed or cut pull keeps all but the last
MiB it received and sends the hub a Range request for the rest.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .durable import sync
from .errors import DownloadError

# huggingface_hub reads this when it is imported: no telemetry from this process
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import huggingface_hub as hf  # noqa: E402
from huggingface_hub import constants  # noqa: E402  (read, never changed)
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError  # noqa: E402
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, httpx  # noqa: E402  (httpx or httpx2)

RESUME_CHUNK = 1 << 20  # bytes reach the .part file (and survive a kill) in steps of this size
STALLED_TRIES = 5  # a cut download is resumed until this many tries in a row receive nothing
Progress = Callable[[str, int, "int | None"], None]  # (what, done, total or None when unknown)


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str
    commit: str | None  # the commit the revision resolved to on the hub, when it said


@dataclass(frozen=True)
class Pin:
    """What a file must be, who says so and what to do when it is not (for the message)."""
    sha256: str | None = None
    size: int | None = None
    by: str = "the registry"
    remedy: str = "The registry entry no longer matches the hub: fix the entry (or report it, for a bundled one)."


@dataclass(frozen=True)
class Remote:
    """A file on the hub at a revision: its metadata, and the pin it was checked against."""
    repo: str
    filename: str
    revision: str
    url: str
    meta: hf.HfFileMetadata
    pin: Pin

    @property
    def what(self) -> str:
        return f"{self.repo}/{self.filename}@{self.revision}"

    @property
    def etag(self) -> str:
        return (self.meta.etag or "").lower()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    return _hashes(path, chunk)[0]


def _hashes(path: Path, chunk: int = 1 << 22) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file in one read: the hub names LFS files by the first, git files by the second."""
    sha256, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha256.update(block)
            blob.update(block)
    return sha256.hexdigest(), blob.hexdigest()


def _hex(s: str | None, n: int) -> bool:
    return bool(s) and len(s) == n and not set(s.lower()) - set("0123456789abcdef")


def download(repo: str, filename: str, revision: str, dest: Path, *, pin: Pin = Pin(),
             on_progress: Progress | None = None) -> Fetched:
    """locate() then fetch(): one file from the hub into dest, checked."""
    return fetch(locate(repo, filename, revision, pin), dest, on_progress)


def locate(repo: str, filename: str, revision: str, pin: Pin = Pin()) -> Remote:
    """What the hub says the file is (one HEAD request), refused when its size or LFS sha256 contradicts the pin,
    so that a changed file is noticed before any byte of it (or of the files after it) is downloaded."""
    what = f"{repo}/{filename}@{revision}"
    if hf.is_offline_mode():
        raise DownloadError("HF_HUB_OFFLINE is set, so nothing may be downloaded: unset it to pull, or pass --model "
                            "./DIR, a directory with a GGUF pair you already have")
    url = hf.hf_hub_url(repo, filename, revision=revision)
    try:
        meta = hf.get_hf_file_metadata(url)  # no retries: an unreachable hub is reported at once
    except (httpx.HTTPError, OSError) as e:  # hub errors are both
        raise _network_error(e, what) from None
    remote = Remote(repo, filename, revision, url, meta, pin)
    if pin.size is not None and meta.size is not None and meta.size != pin.size:
        raise DownloadError(f"{what} is {meta.size} bytes on the hub but {pin.by} pins {pin.size}, so nothing was "
                            f"downloaded. {pin.remedy}")
    if pin.sha256 and _hex(remote.etag, 64) and remote.etag != pin.sha256.lower():
        raise DownloadError(f"checksum mismatch for {what}: {pin.by} pins sha256 {pin.sha256.lower()}, the hub has "
                            f"{remote.etag}, so nothing was downloaded. {pin.remedy}")
    return remote


def fetch(remote: Remote, dest: Path, on_progress: Progress | None = None) -> Fetched:
    """Fetch a located file into dest (resuming dest.part from an earlier try) and verify its size, the pin's sha256
    and the hub's own hash (an LFS file's sha256, a git file's blob sha1); the file is synced before it is renamed.

    Raises DownloadError for anything on the hub's side; an OSError writing dest's directory is left to the caller."""
    what, meta, pin, etag = remote.what, remote.meta, remote.pin, remote.etag
    total = meta.size if meta.size is not None else pin.size
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if total is not None and _size(part) > total:
        part.unlink()
    try:
        _fetch(meta.location or remote.url, part, total, remote.filename, on_progress)
    except httpx.HTTPError as e:
        raise _network_error(e, what) from None
    got_size = _size(part)
    if total is not None and got_size != total:
        part.unlink()
        raise DownloadError(f"{what}: received {got_size} bytes, expected {total}. The download was deleted; run pull "
                            "again")
    sha256, blob_sha1 = _hashes(part)
    for kind, want, got, by in (("sha256", pin.sha256, sha256, pin.by),
                                ("sha256", etag if _hex(etag, 64) else None, sha256, "the hub's LFS pointer"),
                                ("git blob sha1", etag if _hex(etag, 40) else None, blob_sha1, "the hub's git ETag")):
        if want and got != want.lower():
            part.unlink()
            # the hub's own hash failing means bytes broke on the way: trying again can work
            again = "Run pull again." if by != pin.by or pin.by == "the registry" else pin.remedy
            raise DownloadError(f"checksum mismatch for {what}: {by} says {kind} {want.lower()}, the download has "
                                f"{got}. The corrupt download was deleted. {again}")
    sync(part)
    os.replace(part, dest)
    sync(dest.parent)
    return Fetched(dest, got_size, sha256, meta.commit_hash)


def _fetch(url: str, part: Path, total: int | None, label: str, on_progress: Progress | None) -> None:
    """Append the rest of the file to part, resuming after a cut connection while each try brings new bytes."""
    session = hf.get_session()
    # the same credentials as get_hf_file_metadata; raw bytes, so that Range offsets are offsets in the file
    headers = {**build_hf_headers(), "Accept-Encoding": "identity"}
    stalled, last_error = 0, None
    while total is None or _size(part) < total:
        done = _size(part)
        try:
            _append(session, url, headers, part, done, total, label, on_progress)
            if total is None:
                return  # the body ended normally: that is the whole file
        except httpx.TransportError as e:  # cut, reset or timed out: resume from what the .part file holds
            last_error = e
        stalled = 0 if _size(part) > done else stalled + 1
        if stalled >= STALLED_TRIES:
            raise last_error or httpx.TransportError(f"the hub stopped sending data at byte {_size(part)}")
        if stalled:
            time.sleep(1)


def _append(session, url: str, headers: dict, part: Path, done: int, total: int | None, label: str,
            on_progress: Progress | None) -> None:
    if done:
        headers = {**headers, "Range": f"bytes={done}-"}
    with session.stream("GET", url, headers=headers, follow_redirects=True,
                        timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
        hf_raise_for_status(r)
        if done and r.status_code != 206:  # the server ignored the Range: the whole file comes again
            done = 0
        with open(part, "ab" if done else "wb") as f:
            for chunk in r.iter_bytes(RESUME_CHUNK):
                f.write(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(f"downloading {label} (MB)", done // 10**6, total // 10**6 if total else None)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _network_error(e: Exception, what: str) -> DownloadError:
    endpoint = constants.ENDPOINT
    if isinstance(e, EntryNotFoundError):
        return DownloadError(f"{what} is not on the hub at the pinned revision ({e.__class__.__name__})")
    if isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)):
        return DownloadError(f"{what}: {e.__class__.__name__} at {endpoint}")
    reason = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    return DownloadError(f"could not download {what} from {endpoint}: {reason}. Check the network (or HF_ENDPOINT) "
                         "and run pull again: finished bytes are kept and the download resumes")
