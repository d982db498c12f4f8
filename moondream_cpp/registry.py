"""Known models by name: the bundled registry (gguf_models/registry.json) plus the user's own entries in
$MOONDREAM_CPP_HOME/registry.json, checked before use so a mistake in that file is reported in words.

An entry is one of:
  {"kind": "gguf", "repo", "revision", "files": {"text": FILE, "mmproj": FILE}, "quants"?, "default_quant"?}
      a published f16 GGUF pair; FILE is {"name", "size"?, "sha256"?} (size and sha256 pin the download)
  {"kind": "checkpoint", "repo", "revision", "files": [FILE or name], "moondream_revision"?, "quants"?,
   "default_quant"?}  an HF checkpoint, converted after the download
  {"kind": "bundled", ...}  the demo model shipped in the package (bundled registry only)

A revision is a commit where one is known (moondream1), else the repo's tag: a tag can move, so the first download of
each file is recorded in the store's lock file (lockfile.py) and every later pull must match it. Names become store
directories, so a name is a word (NAME_PATTERN), never a path, and file names stay inside the download directory.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import MoondreamError, UnknownModelError

QUANTS = ("f16", "q8_0", "q5_k_m", "q4_k_m")
USER_KINDS = ("gguf", "checkpoint")
HEX = "0123456789abcdef"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = "a letter or digit, then letters, digits, '.', '_' or '-' (at most 100)"


def user_registry_path() -> Path:
    from .store import home  # the store's home holds the user's registry (and store imports this module)

    return home() / "registry.json"


def registry() -> dict:
    """The bundled registry plus the user's entries (a user entry of the same name wins)."""
    from .gguf_models import REGISTRY

    path = user_registry_path()
    if not path.is_file():
        return REGISTRY
    return {**REGISTRY, **_read_user_registry(path)}


def _read_user_registry(path: Path) -> dict:
    def bad(problem: str) -> MoondreamError:
        return MoondreamError(f"{path} is not a valid model registry: {problem}. Fix or delete the file (the format "
                              "is that of gguf_models/registry.json in the package)")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise bad(f"it cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise bad("it is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise bad(f"invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if not isinstance(data, dict):
        raise bad(f"it holds a JSON {type(data).__name__}, not an object of name -> entry")
    for name, entry in data.items():
        problem = (f"is not a valid model name: a name is {NAME_RULE}" if not NAME_PATTERN.fullmatch(name)
                   else _entry_problem(entry))
        if problem:
            raise bad(f"entry {name!r} {problem}")
    return data


def _entry_problem(entry) -> str | None:
    """What is wrong with one user entry, in words, or None."""
    if not isinstance(entry, dict):
        return "is not a JSON object"
    kind = entry.get("kind")
    if kind not in USER_KINDS:
        return f"has kind {kind!r}; it must be one of {', '.join(map(repr, USER_KINDS))}"
    for key in ("repo", "revision"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            return f"needs {key!r} (a string)"
    files = entry.get("files")
    if kind == "gguf":
        if not isinstance(files, dict) or set(files) != {"text", "mmproj"}:
            return "needs 'files': {\"text\": {\"name\": ...}, \"mmproj\": {\"name\": ...}}"
        for role, f in files.items():
            if not isinstance(f, dict):
                return f"needs files.{role}.name (a file name in the repo)"
            problem = _file_problem(f, f"files.{role}")
            if problem:
                return problem
    elif not isinstance(files, list) or not files:
        return "needs 'files': a list of the checkpoint's file names"
    else:
        for i, f in enumerate(files):
            problem = _file_problem(f if isinstance(f, dict) else {"name": f}, f"files[{i}]")
            if problem:
                return problem
    quants = entry.get("quants", QUANTS)
    if not isinstance(quants, list | tuple) or not quants or any(q not in QUANTS for q in quants):
        return f"has quants {quants!r}; each must be one of {', '.join(QUANTS)}"
    default = entry.get("default_quant")
    if default is not None and default not in quants:
        return f"has default_quant {default!r}, which is not among its quants"
    return None


def _file_problem(f: dict, where: str) -> str | None:
    """What is wrong with one file of an entry ({"name", "size"?, "sha256"?}), or None."""
    name = f.get("name")
    if not isinstance(name, str) or not name:
        return f"needs {where}.name (a file name in the repo)"
    if name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in name.split("/")):
        return f"has {where}.name {name!r}; it must be a relative path inside the repo, without '.' or '..' parts"
    if f.get("size") is not None and (type(f["size"]) is not int or f["size"] < 0):
        return f"has {where}.size {f['size']!r}; it must be a byte count or null"
    sha = f.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or set(sha.lower()) - set(HEX)):
        return f"has {where}.sha256 {sha!r}; it must be 64 hex digits or null"
    return None


def files_of(entry: dict) -> list[dict]:
    """An entry's files as {"name", "size"?, "sha256"?}: a checkpoint's bare names become {"name": name}."""
    files = entry["files"]
    return list(files.values()) if isinstance(files, dict) else [f if isinstance(f, dict) else {"name": f}
                                                                  for f in files]


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'moondream2:q4_k_m' -> ('moondream2', 'q4_k_m'); 'moondream2' -> ('moondream2', None). A name that could not
    be a store directory (a path, '..', a space) is refused."""
    name, _, quant = ref.partition(":")
    if not NAME_PATTERN.fullmatch(name) or (quant and not NAME_PATTERN.fullmatch(quant)):
        raise UnknownModelError(f"{ref!r} is not a model name: a name is {NAME_RULE}, optionally followed by "
                                ":QUANT. A model directory or GGUF file is written as a path, with a '/' (./models)")
    return name, (quant or None)


def entry(name: str) -> dict:
    reg = registry()
    if name not in reg:
        raise UnknownModelError(f"unknown model name {name!r}; known models: {', '.join(reg)} (or pass the path of a "
                                "directory holding a GGUF pair, such as ./models)")
    return reg[name]


def check_quant(name: str, entry: dict, quant: str | None) -> str:
    """The quant to use: the one asked for, else the entry's default; refused when the entry does not offer it."""
    quant = quant or entry.get("default_quant", "f16")
    allowed = entry.get("quants", QUANTS)
    if quant not in allowed:
        raise MoondreamError(f"{name} comes in {', '.join(allowed)}, not {quant!r}")
    return quant
