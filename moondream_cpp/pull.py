"""`pull`: a registry model into the local store, downloaded (hub.py), converted or quantized as its entry says.

Safe to rerun after a failure: downloads resume from their .part files in models/.partial/<name>/src, the model is
built in models/.partial/<name>/build-<quant>, checked (gguf_check: what llama.cpp would abort on) and moved into the
store with one synced rename (durable.py). Pulls of one model take turns (an flock on models/<name>/.pull.lock): they
share the download area. Every download is held to the registry's sha256 or, where it has none, to what the first
pull of the model received (lockfile.py). A checkpoint's extra_files (files of other hub repos, such as the 2025-06-21
tokenizer from moondream/starmie-v1) are fetched with it, into the checkpoint directory where the converter looks.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from . import durable, lockfile, store
from .errors import DownloadError, ModelFileError, MoondreamError, os_error_text
from .gguf_check import check_pair
from .hub import Fetched, Remote, fetch, locate, sha256_file
from .registry import Download, check_quant, downloads, entry, parse_ref


def pull_model(ref: str, quant: str | None = None, *, force: bool = False,
               on_step: Callable[[str], None] | None = None, on_progress=None) -> store.LocalModel:
    """Download (and, for HF checkpoints, convert) a registry model into the store; the stored model if it is there
    intact (force: build it again all the same). on_step(text) hears each step; on_progress(what, done, total)
    follows downloads (in MB) and conversions."""
    name, ref_quant = parse_ref(ref)
    e = entry(name)
    if e["kind"] == "bundled":
        raise MoondreamError(f"{name} is bundled with moondream-cpp: there is nothing to pull")
    quant = check_quant(name, e, quant or ref_quant)
    if not force and (have := _intact(name, quant)) is not None:
        return have
    step = on_step or (lambda s: None)
    root = store.models_dir()
    try:
        with durable.exclusive(root / name / ".pull.lock", lambda: step(f"waiting for another pull of {name} to end")):
            if not force and (have := _intact(name, quant)) is not None:
                return have  # the pull we waited for stored it
            _build_and_store(name, e, quant, root, step, on_progress)
    except OSError as err:
        if (full := store.disk_full_error(err, root)) is not None:
            raise full from None
        raise MoondreamError(f"could not write the model store {root} ({os_error_text(err)}); set "
                             "MOONDREAM_CPP_HOME to a writable directory") from None
    return store.find_local(name, quant)


def _intact(name: str, quant: str) -> store.LocalModel | None:
    have = store.find_local(name, quant)
    return have if have is not None and have.damage is None and have.stale is None else None


def _build_and_store(name: str, e: dict, quant: str, root: Path, step, on_progress) -> None:
    work = root / ".partial" / name
    build = work / f"build-{quant}"
    try:
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        files, fetched = _fetch_and_build(name, e, quant, work / "src", build, step, on_progress)
        _check(name, files)  # what llama.cpp will load, checked before it is stored
        manifest = {"name": name, "quant": quant, "repo": e["repo"], "revision": e["revision"],
                    "commit": next((f.commit for d, f in fetched if f.commit and not d.extra), None),
                    "extra_files": [{"repo": d.repo, "revision": d.revision, "name": d.name, "to": d.to,
                                     "commit": f.commit, "sha256": f.sha256} for d, f in fetched if d.extra],
                    "text": files["text"].name, "mmproj": files["mmproj"].name,
                    "bytes": {k: p.stat().st_size for k, p in files.items()},
                    "sha256": {k: sha256_file(p) for k, p in files.items()},
                    "pulled": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (build / store.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        durable.publish(build, root / name / quant, work / f"old-{quant}")
        lockfile.record(name, fetched)
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.parent.rmdir()  # .partial/, when no other pull is pending
        except OSError:
            pass
    except ModelFileError:
        shutil.rmtree(work, ignore_errors=True)  # the downloads are what is wrong: nothing of them is kept
        raise
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)  # downloads (.part) are kept for resuming
        raise


def _check(name: str, files: dict[str, Path]) -> None:
    try:
        check_pair(files["text"], files["mmproj"])
    except ModelFileError as err:
        raise ModelFileError(f"{name}: the downloaded model is not a valid moondream GGUF pair, so nothing was "
                             f"stored: {err}. The files on the hub (or the registry entry) are wrong") from None


def _fetch_and_build(name: str, e: dict, quant: str, src: Path, build: Path, step,
                     on_progress) -> tuple[dict[str, Path], list[tuple[Download, Fetched]]]:
    """The text and mmproj files of the model, made in build (a published pair quantized, or a checkpoint converted),
    and the downloads they were made from."""
    mmproj_type = "f16" if quant == "f16" else "q8_0"
    wanted = downloads(e)
    # every file checked against its pin before the first byte of any is fetched
    remotes = [_locate(name, d, pin) for d, pin in zip(wanted, lockfile.pins(name, e))]
    fetched = []
    for d, remote in zip(wanted, remotes):
        step(f"downloading {d.repo}/{d.name}" if d.extra else f"downloading {d.name}")
        fetched.append((d, fetch(remote, src / d.to, on_progress)))
    if e["kind"] == "gguf":
        got = {role: src / f["name"] for role, f in e["files"].items()}
        _check(name, got)  # llama.cpp's quantizer aborts on some bad files too
        return {"text": _quantized(got["text"], build, quant, step),
                "mmproj": _quantized(got["mmproj"], build, mmproj_type, step, pad_vision_mlp=True)}, fetched
    step("converting")
    from .convert import convert

    out = convert(src, build, quant, mmproj_type, e.get("moondream_revision"), name, on_progress=on_progress)
    return {"text": out.text, "mmproj": out.mmproj}, fetched


def _locate(name: str, d: Download, pin) -> Remote:
    try:
        return locate(d.repo, d.name, d.revision, pin)
    except DownloadError as err:
        if not d.extra:
            raise
        # a file of another repo: say what the model wants it for
        raise DownloadError(f"{name} needs {d.what} (saved in its checkpoint as {d.to}), and it could not be had, "
                            f"so nothing was downloaded: {err}") from None


def _quantized(src: Path, build: Path, qtype: str, step, pad_vision_mlp: bool = False) -> Path:
    """src itself (moved into build) for f16, else llama.cpp's quantization of it: an mmproj's vision MLP padded
    first, as our converter writes it, so that fc2 is quantized too (the published moondream2 mmproj is not)."""
    if qtype == "f16":
        dst = build / src.name
        src.replace(dst)  # the download is the f16 file: move, never copy gigabytes
        return dst
    from .convert.pad_gguf import pad_vision_mlp as pad
    from .convert.quantize import quantize

    stem = src.name.removesuffix(".gguf").removesuffix("-f16")
    dst = build / f"{stem}-{qtype}.gguf"
    padded = build / f"{stem}-padded.gguf"
    source = src
    if pad_vision_mlp and pad(src, padded, lambda: step(f"padding the vision MLP of {src.name}")):
        source = padded
    step(f"quantizing {src.name} to {qtype}")
    quantize(source, dst, qtype)
    padded.unlink(missing_ok=True)
    return dst
