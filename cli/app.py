"""The typer app and what its commands share: model loading by --model NAME/DIR or --text/--mmproj, stderr output."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from moondream_cpp import __version__
from moondream_cpp.errors import MoondreamError

EXIT_CODES = """Exit codes: 0 ok; 1 other user error; 2 bad command line; 3 bad model file or checkpoint;
4 unreadable image; 5 prompt longer than the context; 6 download failed (network, offline, checksum);
7 disk full; 8 unknown model name or model not downloaded; 130 interrupted."""

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help=f"Run moondream, the tiny vision-language model, on llama.cpp.\n\n{EXIT_CODES}")

# options shared by every command that runs a model
MODEL = typer.Option(None, "--model", "-m", help="A model name (`moondream-cpp list`), optionally NAME:QUANT, or the "
                     "path of a directory holding a text + mmproj GGUF pair, written with a '/' (./models): a bare "
                     "word is always a name. Default: the bundled demo model.")
TEXT = typer.Option(None, "--text", help="Text model GGUF (with --mmproj).")
MMPROJ = typer.Option(None, "--mmproj", help="Vision projector (mmproj) GGUF (with --text).")
THREADS = typer.Option(None, "--threads", min=1, help="CPU threads (default: all available).")
GPU_LAYERS = typer.Option(None, "--gpu-layers", min=0, help="Text-model layers on the GPU (default: all, where "
                          "llama.cpp was built with CUDA, Metal or Vulkan; 0: CPU only).")
N_CTX = typer.Option(None, "--n-ctx", min=64, help="Context size in tokens (default 2048; 1024 with --low-ram).")
MAX_TOKENS = typer.Option(None, "--max-tokens", min=1, help="Answer length limit (default: the revision's).")
JSON = typer.Option(False, "--json", help="Print JSON instead of plain text.")
MAX_CROPS = typer.Option(None, "--max-crops", min=1, max=12, help="2025 models: read an image in at most N local "
                         "crops plus the global view (default and most: the model's own, 12 for upstream's; a "
                         "smaller model may allow fewer). Each crop is one vision-tower pass, ~0.3-5 s each at full "
                         "size on a laptop CPU, so fewer is faster but reads the image in less detail than the "
                         "reference model. 2024 models read one view and ignore it.")
LOW_RAM = typer.Option(False, "--low-ram", help="Little memory: q8_0 KV cache, n_ctx 1024, no saved image "
                       "prefixes, the vision tower loaded only while encoding even in batches (docs/performance.md).")


def _version(value: bool):
    if value:
        typer.echo(f"moondream-cpp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


def stderr():
    from rich.console import Console

    return Console(stderr=True)


def note(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def load_model(model: Optional[str], text: Optional[Path], mmproj: Optional[Path], **kw):
    """The model a command runs: --text/--mmproj, else --model (a name, or a path with a '/'), else the bundled
    demo."""
    from moondream_cpp import Moondream
    from moondream_cpp.settings import why_no_gpu
    from moondream_cpp.store import resolve

    why = why_no_gpu() if kw.get("n_gpu_layers") else None
    if why:
        note(f"note: --gpu-layers has no effect: {why}; running on the CPU")
    if text and mmproj:
        return _loaded(Moondream.load(text, mmproj, **kw), kw)
    if text or mmproj:
        raise MoondreamError("pass both --text and --mmproj (or --model NAME_OR_DIR)")
    if model:
        first, second = resolve(model)
        return _loaded(Moondream.load(first, second, **kw), kw)
    from moondream_cpp.gguf_models import DEMO_NOTICE, demo_pair

    text, mmproj = demo_pair()
    if not text.exists():
        raise MoondreamError("no model given and the bundled demo model is missing from this install: pass --model "
                             "NAME_OR_DIR or --text T.gguf --mmproj M.gguf")
    note(DEMO_NOTICE)
    return _loaded(Moondream.load(text, mmproj, **kw), kw)


def _loaded(md, kw: dict):
    if kw.get("max_crops") is not None and md.family != "2025":
        note(f"note: --max-crops has no effect: {md.name} is a {md.family} moondream, which reads one 378x378 view")
    return md


def about(md) -> str:
    """The loaded model in a few words: its name, revision and family (2025: the most crops it reads per image)."""
    crops = f", up to {md.multicrop.max_crops} crops per image" if md.family == "2025" else ""
    return f"{md.name} (revision {md.revision.name}, {md.family} family{crops})"


def timings_line(t: dict) -> str:
    """One human line of an answer's timings (for --verbose)."""
    img = ("image: cached (not re-encoded)" if t.get("image_cached")
           else f"image: encoded in {t.get('image_encode_ms', 0):.1f} ms")
    return (f"[{img} | prompt: {t.get('prompt_tokens', 0)} tokens, {t.get('prompt_evaluated', 0)} evaluated at "
            f"{t.get('prompt_per_second', 0):.1f} tok/s | generation: {t.get('generated_tokens', 0)} tokens at "
            f"{t.get('generation_per_second', 0):.1f} tok/s]")


@contextmanager
def conversion_progress():
    """A progress bar on stderr fed by an on_progress(what, done, total) callback: pull's downloads (in MB) and
    convert's steps report through it. It appears at the first call; total None shows a bar of unknown length."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    state = {}

    def update(what: str, done: int, total):
        if "bar" not in state:
            state["bar"] = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeElapsedColumn(), console=stderr(), transient=True)
            state["bar"].start()
            state["task"] = state["bar"].add_task(what, total=total)
        state["bar"].update(state["task"], description=what, completed=done, total=total)

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].stop()
