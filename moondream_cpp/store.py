"""The local model store: registry names -> GGUF pairs in one cache directory; pull, list, remove.

Layout: $MOONDREAM_CPP_HOME (default ~/.cache/moondream-cpp)/models/<name>/<quant>/ holds a text + mmproj GGUF pair
and manifest.json. A pull works in models/.partial/<name>/ (downloads resume from their .part files) and moves the
finished pair into place with one rename, so the store never holds a half-made model. Only `pull` uses the network.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import DiskFullError, DownloadError, MoondreamError, UnknownModelError, os_error_text

QUANTS = ("f16", "q8_0", "q5_k_m", "q4_k_m")
RESUME_CHUNK = 1 << 20
MANIFEST = "manifest.json"


def home() -> Path:
    env = os.environ.get("MOONDREAM_CPP_HOME")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "moondream-cpp"


def models_dir() -> Path:
    return home() / "models"


def registry() -> dict:
    """The bundled registry (gguf_models/registry.json), plus the user's own entries in $MOONDREAM_CPP_HOME/
    registry.json (same format; a user entry of the same name wins)."""
    from .gguf_models import REGISTRY

    user = home() / "registry.json"
    if not user.is_file():
        return REGISTRY
    try:
        extra = json.loads(user.read_text(encoding="utf-8"))
        assert isinstance(extra, dict) and all(isinstance(v, dict) and "kind" in v for v in extra.values())
    except (ValueError, AssertionError, OSError):
        raise MoondreamError(f"{user} is not a valid registry (a JSON object of name -> entry with a 'kind'); fix "
                             "or delete it") from None
    return {**REGISTRY, **extra}


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


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'moondream2:q4_k_m' -> ('moondream2', 'q4_k_m'); 'moondream2' -> ('moondream2', None)."""
    name, _, quant = ref.partition(":")
    return name, (quant or None)


def _entry(name: str) -> dict:
    reg = registry()
    if name not in reg:
        raise UnknownModelError(f"unknown model name {name!r}; known models: {', '.join(reg)} (or pass a directory "
                                "holding a GGUF pair)")
    return reg[name]


def _check_quant(name: str, entry: dict, quant: str | None) -> str:
    quant = quant or entry.get("default_quant", "f16")
    allowed = entry.get("quants", QUANTS)
    if quant not in allowed:
        raise MoondreamError(f"{name} comes in {', '.join(allowed)}, not {quant!r}")
    return quant


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
        except (ValueError, KeyError, OSError):
            continue
        if text.is_file() and mmproj.is_file():
            out.append(LocalModel(m["name"], m["quant"], man.parent, text, mmproj, m))
    return out


def find_local(name: str, quant: str | None = None) -> LocalModel | None:
    have = [m for m in local_models() if m.name == name and (quant is None or m.quant == quant)]
    if not have:
        return None
    entry = registry().get(name, {})
    best = [m for m in have if m.quant == entry.get("default_quant")]
    return (best or have)[0]


def resolve(model: str | os.PathLike) -> tuple[Path, Path | None]:
    """What --model names: an existing directory or file as it is, else a registry name[:quant]. Returns what
    Moondream.load takes: (directory, None) or (text, mmproj)."""
    p = Path(model).expanduser()
    if p.exists():
        return p, None
    s = str(model)
    name, quant = parse_ref(s)
    if name not in registry():
        if os.sep in s or s.endswith(".gguf") or s.startswith("."):
            raise UnknownModelError(f"{s}: no such model directory or file")
        _entry(name)  # raises with the list of known names
    entry = registry()[name]
    if entry["kind"] == "bundled":
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
        if name in registry() and registry()[name]["kind"] == "bundled":
            raise MoondreamError(f"{name} is bundled with moondream-cpp and cannot be removed")
        raise UnknownModelError(f"{ref} is not in the model store ({models_dir()}); `moondream-cpp list` shows "
                                "what is")
    for m in gone:
        shutil.rmtree(m.directory)
    parent = models_dir() / name
    if parent.is_dir() and not any(p for p in parent.iterdir() if p.name != ".partial"):
        shutil.rmtree(parent, ignore_errors=True)
    return gone


# ------------------------------------------------------------------------------------------------------ pull
def disk_full_error(e: OSError, where: Path) -> MoondreamError | None:
    """The DiskFullError for an OSError that means 'out of space' (numpy's short writes carry no errno)."""
    short_write = e.errno is None and " written" in str(e) and "requested" in str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or short_write:
        if short_write:
            return DiskFullError(f"no space left writing {where} (a short write): free some disk space or set "
                                 "MOONDREAM_CPP_HOME to a directory on a larger disk, then run the command again")
        return DiskFullError(f"no space left writing {where} ({os.strerror(e.errno)}): free some disk space or set "
                             "MOONDREAM_CPP_HOME to a directory on a larger disk, then run the command again")
    return None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _hub():
    """huggingface_hub, imported on demand: nothing but pull touches it (or the network)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # no telemetry: not even the user-agent probe
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise MoondreamError("pull needs huggingface_hub: pip install huggingface_hub") from None
    constants.HF_HUB_DISABLE_TELEMETRY = True
    constants.DOWNLOAD_CHUNK_SIZE = RESUME_CHUNK  # bytes reach the .part file (and survive a kill) in 1 MiB steps
    if constants.HF_HUB_OFFLINE:
        raise DownloadError("HF_HUB_OFFLINE is set, so nothing may be downloaded: unset it to pull, or pass --model "
                            "DIR with a GGUF pair you already have")
    return huggingface_hub


def _network_error(e: Exception, what: str) -> DownloadError:
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(e, EntryNotFoundError):
        return DownloadError(f"{what} is not on the hub at the pinned revision ({e.__class__.__name__})")
    if isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)):
        return DownloadError(f"{what}: {e.__class__.__name__} at {constants.ENDPOINT}")
    reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
    return DownloadError(f"could not download {what} from {constants.ENDPOINT}: {reason}. Check the network (or "
                         "HF_ENDPOINT) and run pull again: finished bytes are kept and the download resumes")


def download(repo: str, filename: str, revision: str, dest: Path, *, sha256: str | None = None,
             size: int | None = None) -> Path:
    """Fetch one file into dest (resuming dest.part from an earlier try), verify size and sha256, return dest."""
    hub = _hub()
    from huggingface_hub.file_download import get_hf_file_metadata, http_get

    what = f"{repo}/{filename}@{revision}"
    url = hub.hf_hub_url(repo, filename, revision=revision)
    try:
        meta = get_hf_file_metadata(url)  # no retries: an unreachable hub is reported at once
    except Exception as e:  # httpx / hub errors: all mean "could not reach or find it"
        raise _network_error(e, what) from None
    if size is not None and meta.size is not None and meta.size != size:
        raise DownloadError(f"{what} is {meta.size} bytes on the hub but the registry pins {size}: the pinned "
                            "revision changed; nothing was downloaded")
    expected = sha256 or (meta.etag if meta.etag and len(meta.etag) == 64 else None)  # LFS etag = sha256
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    if meta.size is not None and done > meta.size:
        part.unlink()
        done = 0
    try:
        with open(part, "ab") as f:
            http_get(meta.location or url, f, resume_size=done, expected_size=meta.size, displayed_filename=filename)
    except OSError as e:
        if (err := disk_full_error(e, part)) is not None:
            raise err from None
        raise _network_error(e, what) from None
    except Exception as e:
        raise _network_error(e, what) from None
    got = sha256_file(part)
    if expected and got != expected:
        part.unlink()
        raise DownloadError(f"checksum mismatch for {what}: expected sha256 {expected}, got {got}. The corrupt "
                            "download was deleted; run pull again")
    os.replace(part, dest)
    return dest


def pull(ref: str, quant: str | None = None, *, on_step: Callable[[str], None] | None = None,
         on_progress=None) -> LocalModel:
    """Download (and, for HF checkpoints, convert) a registry model into the store. Safe to rerun after a failure."""
    name, ref_quant = parse_ref(ref)
    entry = _entry(name)
    if entry["kind"] == "bundled":
        raise MoondreamError(f"{name} is bundled with moondream-cpp: there is nothing to pull")
    quant = _check_quant(name, entry, quant or ref_quant)
    have = find_local(name, quant)
    if have is not None:
        return have
    step = on_step or (lambda s: None)
    root = models_dir()
    work = root / ".partial" / name
    try:
        work.mkdir(parents=True, exist_ok=True)
        build = work / f"build-{quant}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        mmproj_type = "f16" if quant == "f16" else "q8_0"
        files = {}
        if entry["kind"] == "gguf":
            got = {}
            for role, f in entry["files"].items():
                step(f"downloading {f['name']}")
                got[role] = download(entry["repo"], f["name"], entry["revision"], work / "src" / f["name"],
                                     sha256=f.get("sha256"), size=f.get("size"))
            files["text"] = _quantized(got["text"], build, quant, step)
            files["mmproj"] = _quantized(got["mmproj"], build, mmproj_type, step, pad_vision_mlp=True)
        else:
            ck = work / "src"
            for fname in entry["files"]:
                step(f"downloading {fname}")
                download(entry["repo"], fname, entry["revision"], ck / fname)
            step("converting")
            from moondream_cpp.convert import convert

            out = convert(ck, build, quant, mmproj_type, entry.get("moondream_revision"), name,
                          on_progress=on_progress)
            files = {"text": out.text, "mmproj": out.mmproj}
        manifest = {"name": name, "quant": quant, "repo": entry["repo"], "revision": entry["revision"],
                    "text": files["text"].name, "mmproj": files["mmproj"].name,
                    "sha256": {k: sha256_file(p) for k, p in files.items()},
                    "pulled": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (build / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        final = root / name / quant
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(build, final)  # one rename: the store has the whole model or none of it
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.parent.rmdir()  # .partial/, when no other pull is pending
        except OSError:
            pass
    except OSError as e:
        shutil.rmtree(work / f"build-{quant}", ignore_errors=True)
        if (err := disk_full_error(e, root)) is not None:
            raise err from None
        raise MoondreamError(f"could not write the model store {root} ({os_error_text(e)}); set MOONDREAM_CPP_HOME "
                             "to a writable directory") from None
    except BaseException:
        shutil.rmtree(work / f"build-{quant}", ignore_errors=True)  # downloads (.part) are kept for resuming
        raise
    return find_local(name, quant)


def _quantized(src: Path, build: Path, qtype: str, step, pad_vision_mlp: bool = False) -> Path:
    """src itself (moved into build) for f16, else llama.cpp's quantization of it: an mmproj's vision MLP padded
    first, as our converter writes it, so that fc2 is quantized too (the published moondream2 mmproj is not)."""
    if qtype == "f16":
        dst = build / src.name
        os.replace(src, dst)  # the download is the f16 file: move, never copy gigabytes
        return dst
    from moondream_cpp.convert.pad_gguf import pad_vision_mlp as pad
    from moondream_cpp.convert.quantize import quantize

    stem = src.name.removesuffix(".gguf").removesuffix("-f16")
    dst = build / f"{stem}-{qtype}.gguf"
    padded = build / f"{stem}-padded.gguf"
    announce = lambda: step(f"padding the vision MLP of {src.name}")  # noqa: E731
    source = padded if pad_vision_mlp and pad(src, padded, announce) else src
    step(f"quantizing {src.name} to {qtype}")
    quantize(source, dst, qtype)
    padded.unlink(missing_ok=True)
    return dst
