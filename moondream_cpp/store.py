"""The local model store: registry names -> GGUF pairs in one cache directory; list, resolve, remove (pull: pull.py).

Layout: $MOONDREAM_CPP_HOME (default ~/.cache/moondream-cpp)/models/<name>/<quant>/ holds a text + mmproj GGUF pair
and manifest.json. A pull works in models/.partial/<name>/ (downloads resume from their .part files) and moves the
finished pair into place with one rename, so the store never holds a half-made model. Only `pull` uses the network.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import DiskFullError, MoondreamError, UnknownModelError
from .registry import entry, parse_ref, registry

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
        return self.text.stat().st_size + self.mmproj.stat().st_size

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.quant}"


def local_models() -> list[LocalModel]:
    """Every complete model in the store (a directory with a manifest and both files)."""
    out = []
    root = models_dir()
    if not root.is_dir():
        return out
    for man in sorted(root.glob(f"*/*/{MANIFEST}")):
        try:
            m = json.loads(man.read_text())
            text, mmproj = man.parent / m["text"], man.parent / m["mmproj"]
        except (ValueError, KeyError, TypeError, OSError):
            continue
        if text.is_file() and mmproj.is_file():
            out.append(LocalModel(m.get("name", man.parent.parent.name), m.get("quant", man.parent.name), man.parent,
                                  text, mmproj, m))
    return out


def find_local(name: str, quant: str | None = None) -> LocalModel | None:
    """The stored model of this name (and quant): the registry's default quant first when several are stored."""
    have = [m for m in local_models() if m.name == name and (quant is None or m.quant == quant)]
    if not have:
        return None
    default = registry().get(name, {}).get("default_quant")
    best = [m for m in have if m.quant == default]
    return (best or have)[0]


def resolve(model: str | os.PathLike) -> tuple[Path, Path | None]:
    """What --model names: an existing directory or file as it is, else a registry name[:quant]. Returns what
    Moondream.load takes: (directory, None) or (text, mmproj)."""
    p = Path(model).expanduser()
    if p.exists():
        return p, None
    s = str(model)
    name, quant = parse_ref(s)
    if name not in registry() and (os.sep in s or s.endswith(".gguf") or s.startswith(".")):
        raise UnknownModelError(f"{s}: no such model directory or file")
    if entry(name)["kind"] == "bundled":  # entry() also refuses an unknown name, listing the known ones
        from .gguf_models import demo_pair

        return demo_pair()
    found = find_local(name, quant)
    if found is None:
        want = f"{name}:{quant}" if quant else name
        raise UnknownModelError(f"{want} is not downloaded yet: run `moondream-cpp pull {name}"
                                f"{' --quant ' + quant if quant else ''}` (the only command that uses the network)")
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


def pull(ref: str, quant: str | None = None, *, on_step: Callable[[str], None] | None = None,
         on_progress=None) -> LocalModel:
    """Download (and, for HF checkpoints, convert) a registry model into the store; see moondream_cpp.pull."""
    from .pull import pull_model  # imported on demand: only pull loads huggingface_hub and touches the network

    return pull_model(ref, quant, on_step=on_step, on_progress=on_progress)


def disk_full_error(e: OSError, where: Path) -> MoondreamError | None:
    """The DiskFullError for an OSError that means 'out of space' (numpy's short writes carry no errno)."""
    short_write = e.errno is None and " written" in str(e) and "requested" in str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or short_write:
        why = "a short write" if short_write else os.strerror(e.errno)
        return DiskFullError(f"no space left writing {where} ({why}): free some disk space or set MOONDREAM_CPP_HOME "
                             "to a directory on a larger disk, then run the command again")
    return None
