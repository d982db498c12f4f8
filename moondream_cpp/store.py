"""The local model store: registry names -> GGUF pairs in one cache directory; list, resolve, remove (pull: pull.py).

Layout: $MOONDREAM_CPP_HOME (default ~/.cache/moondream-cpp)/models/<name>/<quant>/ holds a text + mmproj GGUF pair
and manifest.json (their sizes and sha256), models/<name>/lock.json what the first download of each source file was
(lockfile.py). A pull works in models/.partial/<name>/ (downloads resume from their .part files), holds an flock on
models/<name>/.pull.lock while it runs and moves the finished pair into place with one synced rename, so the store
never holds a half-made model. A stored file whose size differs from its manifest is reported as damaged, never
used, and so is one pulled from another repo or revision than its name now means (the registry moved the name).
Only `pull` uses the network.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import DiskFullError, ModelFileError, MoondreamError, UnknownModelError
from .registry import check_quant, entry, parse_ref, registry

MANIFEST = "manifest.json"


def home() -> Path:
    env = os.environ.get("MOONDREAM_CPP_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "moondream-cpp"


def models_dir() -> Path:
    return home() / "models"


@dataclass
class LocalModel:
    name: str
    quant: str
    directory: Path
    text: Path
    mmproj: Path
    manifest: dict

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in (self.text, self.mmproj) if p.is_file())

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.quant}"

    @property
    def damage(self) -> str | None:
        """What is wrong with the stored files (missing, or not the size they were stored with), or None."""
        for role, path in (("text", self.text), ("mmproj", self.mmproj)):
            if not path.is_file():
                return f"{path.name} is missing"
            want = (self.manifest.get("bytes") or {}).get(role)
            if want is not None and path.stat().st_size != want:
                return f"{path.name} is {path.stat().st_size} bytes, not the {want} it was stored with"
        return None

    @property
    def stale(self) -> str | None:
        """How the stored model differs from what its name means now (the registry moved the name to another repo or
        revision, as `moondream2` moved from the 2024 GGUF pair to 2025-06-21), or None."""
        e = registry().get(self.name)
        if not e or "repo" not in e or "repo" not in self.manifest:
            return None
        was, now = f"{self.manifest['repo']}@{self.manifest.get('revision')}", f"{e['repo']}@{e['revision']}"
        return None if was == now else f"it was pulled from {was}, and {self.name} now names {now}"

    @property
    def repair(self) -> str:
        return f"run `moondream-cpp pull {self.ref} --force` to fetch it again, or `moondream-cpp rm {self.ref}`"


def is_path(model: str | os.PathLike) -> bool:
    """Whether --model names a path rather than a model name: a path has a separator (./moondream2, ~/m, /abs)."""
    if isinstance(model, os.PathLike):
        return True
    seps = {"/", os.sep, os.altsep} - {None}
    return any(c in model for c in seps) or model in (".", "..") or model.startswith("~")


def local_models() -> list[LocalModel]:
    """Every model in the store (a models/<name>/<quant>/ directory with a manifest), damaged ones included."""
    out = []
    root = models_dir()
    if not root.is_dir():
        return out
    for man in sorted(root.glob(f"*/*/{MANIFEST}")):
        if man.parent.parent.name.startswith("."):  # .partial/: pulls at work
            continue
        try:
            m = json.loads(man.read_text())
            text, mmproj = man.parent / m["text"], man.parent / m["mmproj"]
        except (ValueError, KeyError, TypeError, OSError):
            continue
        out.append(LocalModel(m.get("name", man.parent.parent.name), m.get("quant", man.parent.name), man.parent,
                              text, mmproj, m))
    return out


def find_local(name: str, quant: str | None = None) -> LocalModel | None:
    """The stored model of this name (and quant): the registry's default quant first when several are stored, then
    an intact one."""
    have = [m for m in local_models() if m.name == name and (quant is None or m.quant == quant)]
    if not have:
        return None
    default = registry().get(name, {}).get("default_quant")
    return sorted(have, key=lambda m: (m.stale is not None, m.quant != default, m.damage is not None))[0]


def resolve(model: str | os.PathLike) -> tuple[Path, Path | None]:
    """What --model names: a path (with a separator: ./dir, /abs/file.gguf) as it is, else a registry name[:quant]
    (never a directory that happens to have that name). Returns what Moondream.load takes: (directory, None) or
    (text, mmproj)."""
    if is_path(model):
        p = Path(model).expanduser()
        if not p.exists():
            raise UnknownModelError(f"{model}: no such model directory or file")
        return p, None
    if model not in registry() and Path(model).exists():
        what = "directory" if Path(model).is_dir() else "file"
        raise UnknownModelError(f"unknown model name {model!r}; to use the {what} of that name here, write it as a "
                                f"path: ./{model}")
    name, quant = parse_ref(model)
    e = entry(name)  # refuses an unknown name, listing the known ones
    if e["kind"] == "bundled":
        from .gguf_models import demo_pair

        return demo_pair(name)
    if quant:
        check_quant(name, e, quant)
    found = find_local(name, quant)
    if found is None:
        want = f"{name}:{quant}" if quant else name
        raise UnknownModelError(f"{want} is not downloaded yet: run `moondream-cpp pull {name}"
                                f"{' --quant ' + quant if quant else ''}` (the only command that uses the network)")
    if found.stale:
        raise UnknownModelError(f"the stored {found.ref} is not the model {name} names now ({found.stale}): run "
                                f"`moondream-cpp pull {name}{' --quant ' + quant if quant else ''}` to fetch it "
                                f"(`moondream-cpp rm {found.ref}` deletes the old one)")
    if found.damage:
        raise ModelFileError(f"the stored {found.ref} in {found.directory} is damaged ({found.damage}): "
                             f"{found.repair}")
    return found.text, found.mmproj


def remove(ref: str) -> list[LocalModel]:
    """Delete name (every quant) or name:quant from the store. Returns what was removed."""
    name, quant = parse_ref(ref)
    gone = [m for m in local_models() if m.name == name and (quant is None or m.quant == quant)]
    if not gone:
        if registry().get(name, {}).get("kind") == "bundled":
            raise MoondreamError(f"{name} is bundled with moondream-cpp and cannot be removed")
        raise UnknownModelError(f"{ref} is not in the model store ({models_dir()}); `moondream-cpp list` shows "
                                "what is")
    for m in gone:
        shutil.rmtree(m.directory)
    parent = models_dir() / name
    if parent.is_dir() and not any(parent.iterdir()):
        shutil.rmtree(parent, ignore_errors=True)
    return gone


def pull(ref: str, quant: str | None = None, *, force: bool = False, on_step: Callable[[str], None] | None = None,
         on_progress=None) -> LocalModel:
    """Download (and, for HF checkpoints, convert) a registry model into the store; see moondream_cpp.pull."""
    from .pull import pull_model  # imported on demand: only pull loads huggingface_hub and touches the network

    return pull_model(ref, quant, force=force, on_step=on_step, on_progress=on_progress)


def disk_full_error(e: OSError, where: Path) -> MoondreamError | None:
    """The DiskFullError for an OSError that means 'out of space' (numpy's short writes carry no errno)."""
    short_write = e.errno is None and " written" in str(e) and "requested" in str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or short_write:
        why = "a short write" if short_write else os.strerror(e.errno)
        return DiskFullError(f"no space left writing {where} ({why}): free some disk space or set MOONDREAM_CPP_HOME "
                             "to a directory on a larger disk, then run the command again")
    return None
