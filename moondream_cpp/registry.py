"""Known models by name: the bundled registry (gguf_models/registry.json) plus the user's own entries in
$MOONDREAM_CPP_HOME/registry.json, checked before use so a mistake in that file is reported in words.

An entry is one of:
  {"kind": "gguf", "repo", "revision", "files": {"text": FILE, "mmproj": FILE}, "family"?, "quants"?,
   "default_quant"?}  a published f16 GGUF pair; FILE is {"name", "size"?, "sha256"?} (size and sha256 pin the download)
  {"kind": "checkpoint", "repo", "revision", "files": [FILE or name], "extra_files"?, "moondream_revision"?,
   "quants"?, "default_quant"?}  an HF checkpoint, converted after the download; each of "extra_files" is
      {"repo", "revision", "name", "to", "size"?, "sha256"?}: a file of another hub repo, saved at `to` inside the
      downloaded checkpoint, where the converter looks for it (the 2025-06-21 tokenizer, moondream/starmie-v1)
  {"kind": "bundled", ...}  the demo model shipped in the package (bundled registry only)

A revision is a commit where one is known (moondream1), else the repo's tag or branch: it can move, so the first
download of each file is recorded in the store's lock file (lockfile.py) and every later pull must match it. Names
become store directories, so a name is a word (NAME_PATTERN), never a path; repo file names and `to` stay inside the
download directory; moondream_revision is one the converter knows (spec.REVISIONS, spec2025.REVISIONS_2025).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import MoondreamError, UnknownModelError

QUANTS = ("f16", "q8_0", "q5_k_m", "q4_k_m")
USER_KINDS = ("gguf", "checkpoint")
HEX = "0123456789abcdef"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = "a letter or digit, then letters, digits, '.', '_' or '-' (at most 100)"
# a hub repo id ("owner/name" or "name"), as huggingface_hub checks it: it goes unquoted into the download URL
REPO_PATTERN = re.compile(r"(?!.*(\.\.|--))([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")
EXTRA_FILE = '{"repo", "revision", "name", "to"}'


@dataclass(frozen=True)
class Download:
    """One file a pull fetches: `name` in hub repo `repo` at `revision`, saved at `to` in the download directory."""
    repo: str
    revision: str
    name: str
    to: str
    size: int | None = None
    sha256: str | None = None
    extra: bool = False  # from another repo than the entry's own (extra_files)

    @property
    def what(self) -> str:
        return f"{self.repo}/{self.name}@{self.revision}"


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
    if not REPO_PATTERN.fullmatch(entry["repo"]):
        return f"has repo {entry['repo']!r}; it must be a hub repo id, OWNER/NAME"
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
    problem = _extra_files_problem(entry) or _saved_problem(entry) or _revision_problem(entry)
    if problem:
        return problem
    quants = entry.get("quants", QUANTS)
    if not isinstance(quants, list | tuple) or not quants or any(q not in QUANTS for q in quants):
        return f"has quants {quants!r}; each must be one of {', '.join(QUANTS)}"
    default = entry.get("default_quant")
    if default is not None and default not in quants:
        return f"has default_quant {default!r}, which is not among its quants"
    return None


def _extra_files_problem(entry: dict) -> str | None:
    """What is wrong with an entry's extra_files (files of other repos saved inside the download), or None."""
    extra = entry.get("extra_files")
    if extra is None:
        return None
    if entry["kind"] != "checkpoint":
        return "has 'extra_files', which only a checkpoint entry may have (they are saved in the checkpoint)"
    if not isinstance(extra, list):
        return f"has 'extra_files' that is not a list of {EXTRA_FILE} objects"
    for i, x in enumerate(extra):
        where = f"extra_files[{i}]"
        if not isinstance(x, dict):
            return f"has {where} that is not a JSON object {EXTRA_FILE}"
        for key in ("repo", "revision", "to"):
            if not isinstance(x.get(key), str) or not x[key]:
                return f"needs {where}.{key} (a string)"
        if not REPO_PATTERN.fullmatch(x["repo"]):
            return f"has {where}.repo {x['repo']!r}; it must be a hub repo id, OWNER/NAME"
        problem = _file_problem(x, where) or _path_problem(x["to"], f"{where}.to", "the downloaded checkpoint")
        if problem:
            return problem
    return None


def _saved_problem(entry: dict) -> str | None:
    """Two downloads saved at one place (or one inside the other) would overwrite each other."""
    saved = [d.to for d in downloads(entry)]
    for to in saved:
        parents = ["/".join(to.split("/")[:n]) for n in range(1, to.count("/") + 1)]
        if saved.count(to) > 1 or f"{to}.part" in saved or any(p in saved for p in parents):  # .part: resumes
            return (f"saves two downloads at {to!r} (or one inside the other): each file and extra_files[].to "
                    "must name a place of its own")
    return None


def _revision_problem(entry: dict) -> str | None:
    """moondream_revision, when given, must be one the converter knows; family, when given, a word or two."""
    from .spec import REVISIONS
    from .spec2025 import REVISIONS_2025

    rev = entry.get("moondream_revision")
    known = [*REVISIONS, *REVISIONS_2025]
    if rev is not None and rev not in known:
        return f"has moondream_revision {rev!r}; it must be one of {', '.join(known)}"
    if "family" in entry and not isinstance(entry["family"], str):
        return f"has family {entry['family']!r}; it must be a string (shown by `list --all`)"
    return None


def _file_problem(f: dict, where: str) -> str | None:
    """What is wrong with one file of an entry ({"name", "size"?, "sha256"?}), or None."""
    name = f.get("name")
    if not isinstance(name, str) or not name:
        return f"needs {where}.name (a file name in the repo)"
    problem = _path_problem(name, f"{where}.name", "the repo")
    if problem:
        return problem
    if f.get("size") is not None and (type(f["size"]) is not int or f["size"] < 0):
        return f"has {where}.size {f['size']!r}; it must be a byte count or null"
    sha = f.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or set(sha.lower()) - set(HEX)):
        return f"has {where}.sha256 {sha!r}; it must be 64 hex digits or null"
    return None


def _path_problem(path: str, where: str, inside: str) -> str | None:
    """A path that could leave the directory it is joined to (absolute, '..', a backslash, a NUL) is refused."""
    if path.startswith("/") or "\\" in path or "\0" in path or any(p in ("", ".", "..") for p in path.split("/")):
        return f"has {where} {path!r}; it must be a relative path inside {inside}, without '.' or '..' parts"
    return None


def downloads(entry: dict) -> list[Download]:
    """What a pull of the entry fetches: its own files (a checkpoint's bare names become {"name": name}), then its
    extra_files."""
    files = entry["files"]
    own = list(files.values()) if isinstance(files, dict) else [f if isinstance(f, dict) else {"name": f}
                                                                 for f in files]
    return ([Download(entry["repo"], entry["revision"], f["name"], f["name"], f.get("size"), f.get("sha256"))
             for f in own]
            + [Download(x["repo"], x["revision"], x["name"], x["to"], x.get("size"), x.get("sha256"), extra=True)
               for x in entry.get("extra_files", [])])


def family_of(entry: dict) -> str:
    """Which moondream an entry is, for `list`: its moondream_revision says, else its own "family"."""
    from .spec2025 import REVISIONS_2025

    rev = entry.get("moondream_revision")
    if rev == "moondream1":
        return "moondream1"
    if rev in REVISIONS_2025:
        return "moondream2 2025"
    if rev is not None:
        return "moondream2 2024"
    return entry.get("family", "?")


def kind_of(entry: dict) -> str:
    """What a pull of the entry fetches, for `list`: a published GGUF pair (quantized here), or an HF checkpoint and
    the other repos it takes files from (converted here)."""
    if entry["kind"] != "checkpoint":
        return {"gguf": "published GGUF"}.get(entry["kind"], entry["kind"])
    return "HF checkpoint" + "".join(f" + {r.split('/')[-1]}" for r in sorted({x["repo"] for x in
                                                                               entry.get("extra_files", [])}))


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
