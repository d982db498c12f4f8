"""`pull`: a registry model into the local store, downloaded (hub.py), converted or quantized as its entry says.

Safe to rerun after a failure: downloads resume from their .part files in models/.partial/<name>/src, the model is
built in models/.partial/<name>/build-<quant> and moved into the store with one rename.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from . import store
from .errors import MoondreamError, os_error_text
from .hub import download, sha256_file
from .registry import check_quant, entry, parse_ref


def pull_model(ref: str, quant: str | None = None, *, on_step: Callable[[str], None] | None = None,
               on_progress=None) -> store.LocalModel:
    """Download (and, for HF checkpoints, convert) a registry model into the store; the stored model if it is there.
    on_step(text) hears each step; on_progress(what, done, total) follows downloads (in MB) and conversions."""
    name, ref_quant = parse_ref(ref)
    e = entry(name)
    if e["kind"] == "bundled":
        raise MoondreamError(f"{name} is bundled with moondream-cpp: there is nothing to pull")
    quant = check_quant(name, e, quant or ref_quant)
    have = store.find_local(name, quant)
    if have is not None:
        return have
    step = on_step or (lambda s: None)
    root = store.models_dir()
    work = root / ".partial" / name
    build = work / f"build-{quant}"
    try:
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir()
        files = _fetch_and_build(name, e, quant, work / "src", build, step, on_progress)
        manifest = {"name": name, "quant": quant, "repo": e["repo"], "revision": e["revision"],
                    "text": files["text"].name, "mmproj": files["mmproj"].name,
                    "sha256": {k: sha256_file(p) for k, p in files.items()},
                    "pulled": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (build / store.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        final = root / name / quant
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(build, final)  # one rename: the store has the whole model or none of it
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.parent.rmdir()  # .partial/, when no other pull is pending
        except OSError:
            pass
    except OSError as err:
        shutil.rmtree(build, ignore_errors=True)
        if (full := store.disk_full_error(err, root)) is not None:
            raise full from None
        raise MoondreamError(f"could not write the model store {root} ({os_error_text(err)}); set "
                             "MOONDREAM_CPP_HOME to a writable directory") from None
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)  # downloads (.part) are kept for resuming
        raise
    return store.find_local(name, quant)


def _fetch_and_build(name: str, e: dict, quant: str, src: Path, build: Path, step, on_progress) -> dict[str, Path]:
    """The text and mmproj files of the model, made in build: a published pair quantized, or a checkpoint converted."""
    mmproj_type = "f16" if quant == "f16" else "q8_0"
    if e["kind"] == "gguf":
        got = {}
        for role, f in e["files"].items():
            step(f"downloading {f['name']}")
            got[role] = download(e["repo"], f["name"], e["revision"], src / f["name"], sha256=f.get("sha256"),
                                 size=f.get("size"), on_progress=on_progress)
        return {"text": _quantized(got["text"], build, quant, step),
                "mmproj": _quantized(got["mmproj"], build, mmproj_type, step, pad_vision_mlp=True)}
    for fname in e["files"]:
        step(f"downloading {fname}")
        download(e["repo"], fname, e["revision"], src / fname, on_progress=on_progress)
    step("converting")
    from .convert import convert

    out = convert(src, build, quant, mmproj_type, e.get("moondream_revision"), name, on_progress=on_progress)
    return {"text": out.text, "mmproj": out.mmproj}


def _quantized(src: Path, build: Path, qtype: str, step, pad_vision_mlp: bool = False) -> Path:
    """src itself (moved into build) for f16, else llama.cpp's quantization of it: an mmproj's vision MLP padded
    first, as our converter writes it, so that fc2 is quantized too (the published moondream2 mmproj is not)."""
    if qtype == "f16":
        dst = build / src.name
        os.replace(src, dst)  # the download is the f16 file: move, never copy gigabytes
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
