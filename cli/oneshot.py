"""One-shot commands: `query IMAGE QUESTION` and `caption IMAGE...` (many images, one model load)."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand

from moondream_cpp.errors import ImageError, MoondreamError

from .app import (GPU_LAYERS, JSON, LOW_RAM, MAX_CROPS, MAX_TOKENS, MMPROJ, MODEL, N_CTX, TEXT, THREADS, app,
                  load_model, note, print_json, stderr)


@app.command()
def query(
    image: Path = typer.Argument(..., help="The image."),
    question: str = typer.Argument(..., help="The question about it."),
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    max_tokens: Optional[int] = MAX_TOKENS,
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    n_ctx: Optional[int] = N_CTX,
    max_crops: Optional[int] = MAX_CROPS,
    low_ram: bool = LOW_RAM,
    as_json: bool = JSON,
):
    """Answer one question about one image."""
    from moondream_cpp.image import load_image
    from moondream_cpp.options import GenerationOptions

    picture = load_image(image)
    md = load_model(model, text, mmproj, n_threads=threads, n_gpu_layers=gpu_layers, n_ctx=n_ctx, low_ram=low_ram,
                    max_crops=max_crops)
    a = md.query(picture, question, options=GenerationOptions(max_tokens=max_tokens))
    if as_json:
        print_json({"image": str(image), "question": question, "answer": a.text, "finish_reason": a.finish_reason,
                    "timings": a.timings})
    else:
        typer.echo(a.text)


RAY_ADDRESS = re.compile(r"^(auto|local|ray://.+|\[?[\w.:-]+\]?:\d+)$")


class CaptionCommand(TyperCommand):
    """caption, whose --ray takes an optional ADDRESS (typer has no such option): a bare --ray gets "local"."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        args = list(args)
        for i, a in enumerate(args):
            if a == "--":
                break
            if a == "--ray" and (i + 1 == len(args) or not RAY_ADDRESS.match(args[i + 1])):
                args.insert(i + 1, "local")
                break
        return super().parse_args(ctx, args)


@app.command(cls=CaptionCommand)
def caption(
    images: List[str] = typer.Argument(..., help="Images, directories (walked recursively) or glob patterns."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Append JSON-lines records here (crash-safe; "
                                       "resumes where it stopped)."),
    question: Optional[str] = typer.Option(None, "--question", "-q", help="Ask this instead of captioning."),
    length: str = typer.Option("normal", "--length", help="short, normal, or long (the 2025 models from "
                               "2025-03-27 on; a model without it is refused before any image is read)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip images already in --out (default), or "
                                "start the file afresh."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="On resume, try unreadable images again."),
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    max_tokens: Optional[int] = MAX_TOKENS,
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    n_ctx: Optional[int] = N_CTX,
    max_crops: Optional[int] = MAX_CROPS,
    low_ram: bool = LOW_RAM,
    as_json: bool = JSON,
    ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]", help="Run on a Ray cluster, one model "
                                      "per actor (needs --out; pip install moondream-cpp[ray]): ADDRESS auto (the "
                                      "cluster this machine joined), HOST:PORT or ray://HOST:PORT; none: start a "
                                      "local one. Images may also be fsspec URLs (s3://..., gs://..., file://...). "
                                      "docs/ray.md."),
    actors: Optional[int] = typer.Option(None, "--actors", min=1, help="With --ray: how many actors (default: as "
                                         "many as the cluster's CPUs hold)."),
    actor_cpus: float = typer.Option(1.0, "--actor-cpus", min=0.01, help="With --ray: CPUs each actor reserves "
                                     "and runs llama.cpp threads on."),
    actor_gpus: float = typer.Option(0.0, "--actor-gpus", min=0, help="With --ray: GPUs each actor reserves."),
):
    """Caption images (or ask --question about each): one model load, a progress bar with images/s and ETA.
    With --out, records go to a JSON-lines file that a crash cannot corrupt; run again to resume.
    With --ray, the same records come from a Ray cluster (docs/ray.md)."""
    from moondream_cpp import spec2025

    if length not in spec2025.STARMIE_CAPTIONS:  # every length any model has; the model's own check follows
        raise MoondreamError(f"--length must be one of {', '.join(spec2025.STARMIE_CAPTIONS)}, not {length!r}")
    if ray is not None:
        if not out:
            raise MoondreamError("--ray writes its records to a file: give --out FILE")
        if threads is not None:
            raise MoondreamError("--threads does not apply with --ray: each actor runs --actor-cpus threads")
        from moondream_cpp.ray_batch import RayOptions

        load = dict(n_gpu_layers=gpu_layers, n_ctx=n_ctx, low_ram=low_ram, max_crops=max_crops)
        opts = RayOptions(ray, actors, actor_cpus, actor_gpus, {k: v for k, v in load.items() if v is not None}, note)
        return _caption_on_ray(images, out, question, length, resume, retry_errors, (model, text, mmproj),
                               max_tokens, opts)
    from moondream_cpp.batch import check_output, collect_images, run_batch
    from moondream_cpp.options import GenerationOptions

    options = GenerationOptions(max_tokens=max_tokens)
    paths = collect_images(images)
    if not paths:
        raise ImageError(f"no images found in {' '.join(images)}")
    if out:
        check_output(out)
    md = load_model(model, text, mmproj, n_threads=threads, n_gpu_layers=gpu_layers, n_ctx=n_ctx, low_ram=low_ram,
                    max_crops=max_crops)
    if not question:
        md.caption_items_check(length, "--length")
    key = "answer" if question else "caption"
    failed = []
    with _progress_bar(len(paths) == 1) as bar:
        task = bar.add_task("captioning" if not question else "asking", total=len(paths), rate="")
        advance = _rate_updater(bar, task)

        def show(rec):
            advance()
            if "error" in rec:
                failed.append(rec)
                if not out:
                    note(f"error: {rec['error']}")
            if out:
                return
            if as_json:
                print_json({"image": rec["path"], **({key: rec["answer"]} if "answer" in rec else
                                                     {"error": rec["error"]}),
                            **({"timings": rec["timings"]} if "timings" in rec else {})})
            elif "answer" in rec:
                sys.stdout.write(rec["answer"] + "\n" if len(paths) == 1 else f"{rec['path']}: {rec['answer']}\n")
                sys.stdout.flush()

        if out:
            rep = run_batch(md, paths, out, question=question, length=length, resume=resume,
                            retry_errors=retry_errors, options=options, on_record=show)
            bar.update(task, completed=len(paths))
            _summary(out, rep)
        else:
            with md.batch_mode():
                _each(md, paths, question, length, options, show)
    if failed and not out:
        raise typer.Exit(ImageError.exit_code)


def _each(md, paths, question, length, options, show):
    """Ask about every image in turn (the no --out path of caption), handing each record to show."""
    for p in paths:
        rec = {"path": str(p)}
        try:
            a = md.query(p, question, options=options) if question else md.caption(p, length, options=options)
            rec.update(answer=a.text, timings=a.timings)
        except ImageError as e:
            rec["error"] = str(e)
        show(rec)


def _rate_updater(bar, task):
    """A callable that advances `task` by one image and shows images/s since the first one."""
    import time

    first, done = [None], [0]

    def advance():
        first[0] = first[0] or time.perf_counter()
        done[0] += 1
        el = time.perf_counter() - first[0]
        bar.update(task, advance=1, rate=f"{done[0] / el:.1f} img/s" if el > 0 else "")
    return advance


def _progress_bar(disable: bool):
    """A bar on stderr: done of total, images/s (the task's rate field), elapsed and remaining time."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=stderr(),
                    transient=True, disable=disable)


def _model_files(model, text, mmproj) -> tuple[Path, Optional[Path]]:
    """What load_model would load, without loading it (the Ray actors do): --text/--mmproj, --model, the demo."""
    from moondream_cpp.store import resolve

    if text and mmproj:
        return text, mmproj
    if text or mmproj:
        raise MoondreamError("pass both --text and --mmproj (or --model NAME_OR_DIR)")
    if model:
        return resolve(model)
    from moondream_cpp.gguf_models import DEMO_NOTICE, demo_pair

    note(DEMO_NOTICE)
    return demo_pair()


def _caption_on_ray(images, out, question, length, resume, retry_errors, model_args, max_tokens, opts):
    """caption --ray: the records of run_batch, made by Ray actors (moondream_cpp/ray_batch.py)."""

    from moondream_cpp.ray_captioner import collect_sources

    sources = collect_sources(images)
    if not sources:
        raise ImageError(f"no images found in {' '.join(images)}")
    text, mmproj = _model_files(*model_args)
    from moondream_cpp.ray_batch import run_ray_batch

    with _progress_bar(False) as bar:
        task = bar.add_task("captioning on Ray" if not question else "asking on Ray", total=len(sources), rate="")
        advance = _rate_updater(bar, task)
        show = lambda rec: advance()  # noqa: E731

        rep = run_ray_batch(sources, out, text, mmproj, question=question, length=length, max_tokens=max_tokens,
                            resume=resume, retry_errors=retry_errors, options=opts, on_record=show)
    _summary(out, rep)


def _summary(out, rep) -> None:
    note(f"{out}: {rep.written} new records ({rep.errors} unreadable images), {rep.skipped} already done, "
         f"{rep.total} images")
    if rep.bad_lines:
        note(f"note: line(s) {', '.join(map(str, rep.bad_lines[:10]))} of {out} are not records; kept as they are")
