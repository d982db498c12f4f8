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
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import durable, store
from .errors import MoondreamError
from .hub import Fetched, Pin
from .registry import HEX, files_of

LOCK = "lock.json"


def lock_path(name: str) -> Path:
    return store.models_dir() / name / LOCK


def _source(entry: dict) -> str:
    return f"{entry['repo']}@{entry['revision']}"


def pins(name: str, entry: dict) -> dict[str, Pin]:
    """Each file's pin: the registry's sha256 where it has one, else the lock file's, else only its size if known."""
    path = lock_path(name)
    locked = _read(path)["sources"].get(_source(entry), {})
    moved = (f"A moved tag or a changed repo: the hub serves another file under revision {entry['revision']} than "
             f"the one this store first pulled ({locked.get('locked')}), and nothing was installed. If you trust the "
             f"new file, delete {path} and pull again.")
    out = {}
    for f in files_of(entry):
        mine = locked.get("files", {}).get(f["name"])
        if f.get("sha256"):
            out[f["name"]] = Pin(f["sha256"], f.get("size"))
        elif mine:
            size = f["size"] if f.get("size") is not None else mine["size"]
            out[f["name"]] = Pin(mine["sha256"], size, f"the lock file {path}", moved)
        else:
            out[f["name"]] = Pin(None, f.get("size"))
    return out


def record(name: str, entry: dict, fetched: list[Fetched]) -> None:
    """Add the files of a successful pull that the lock file does not hold yet (those it holds were checked against
    it on the way in)."""
    path = lock_path(name)
    data = _read(path)
    src = data["sources"].setdefault(_source(entry), {"commit": None, "locked": None, "files": {}})
    new = {f.path.name: {"size": f.size, "sha256": f.sha256} for f in fetched if f.path.name not in src["files"]}
    if not new:
        return
    src["files"].update(new)
    src["commit"] = src["commit"] or next((f.commit for f in fetched if f.commit), None)
    src["locked"] = src["locked"] or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
