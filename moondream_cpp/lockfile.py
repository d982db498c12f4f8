"""The store's lock file: what the first download of each source file of a model was (size and sha256), so that a
later pull notices when the hub serves something else under the same revision (a moved tag, a rewritten repo) and
refuses it instead of installing it.

Most registry revisions are tags, and the hub publishes no sha256 for small files or for checkpoints, so what a file
must be cannot be known offline: it is trusted on first use, like Cargo.lock or ssh's known_hosts. The file,
models/<name>/lock.json:
  {"sources": {"<repo>@<revision>": {"commit": the commit the revision named then, "locked": date,
                                     "files": {"<file>": {"size": bytes, "sha256": hex}}}}}
is written only after a pull has checked and stored the model (a download that failed its checks is never
recorded) and read before every later pull of the model, any quant. `rm` keeps it, as the memory of what was trusted.
A file of another repo (an entry's extra_files, such as the 2025-06-21 tokenizer) is a source of its own.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import durable, store
from .errors import MoondreamError
from .hub import Fetched, Pin
from .registry import HEX, Download, downloads

LOCK = "lock.json"


def lock_path(name: str) -> Path:
    return store.models_dir() / name / LOCK


def _source(d: Download) -> str:
    return f"{d.repo}@{d.revision}"


def pins(name: str, entry: dict) -> list[Pin]:
    """The pin of each of registry.downloads(entry), in order: the registry's sha256 where it has one, else the lock
    file's, else only its size if known."""
    path = lock_path(name)
    sources = _read(path)["sources"]
    out = []
    for d in downloads(entry):
        locked = sources.get(_source(d), {})
        mine = locked.get("files", {}).get(d.name)
        if d.sha256:
            out.append(Pin(d.sha256, d.size))
        elif mine:
            moved = (f"A moved tag or a changed repo: the hub serves another file under revision {d.revision} of "
                     f"{d.repo} than the one this store first pulled ({locked.get('locked')}), and nothing was "
                     f"installed. If you trust the new file, delete {path} and pull again.")
            size = d.size if d.size is not None else mine["size"]
            out.append(Pin(mine["sha256"], size, f"the lock file {path}", moved))
        else:
            out.append(Pin(None, d.size))
    return out


def record(name: str, fetched: list[tuple[Download, Fetched]]) -> None:
    """Add the files of a successful pull that the lock file does not hold yet (those it holds were checked against
    it on the way in), each under its own repo@revision."""
    path = lock_path(name)
    data = _read(path)
    changed = False
    for d, f in fetched:
        src = data["sources"].setdefault(_source(d), {"commit": None, "locked": None, "files": {}})
        if d.name in src["files"]:
            continue
        src["files"][d.name] = {"size": f.size, "sha256": f.sha256}
        src["commit"] = src["commit"] or f.commit
        src["locked"] = src["locked"] or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_json(path, data)


def _read(path: Path) -> dict:
    """The lock file's content ({"sources": {}} when there is none), checked so that a damaged one is named."""
    def bad(problem: str) -> MoondreamError:
        return MoondreamError(f"{path} is not a valid lock file: {problem}. Delete it; the next pull records the "
                              "files it downloads again")

    if not path.exists():
        return {"sources": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise bad(f"it cannot be read as JSON ({e.__class__.__name__})") from None
    sources = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(sources, dict):
        raise bad("it has no 'sources' object")
    for source, locked in sources.items():
        files = locked.get("files") if isinstance(locked, dict) else None
        if not isinstance(files, dict):
            raise bad(f"source {source!r} has no 'files' object")
        for fname, f in files.items():
            ok = (isinstance(f, dict) and type(f.get("size")) is int and isinstance(f.get("sha256"), str)
                  and len(f["sha256"]) == 64 and not set(f["sha256"]) - set(HEX))
            if not ok:
                raise bad(f"file {fname!r} of {source!r} needs an integer 'size' and a 64-hex 'sha256'")
    return data
