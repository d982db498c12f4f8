"""One-shot commands: `query IMAGE QUESTION` and `caption IMAGE...` (many images, one model load)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from moondream_cpp.errors import ImageError

from .app import (JSON, LOW_RAM, MAX_TOKENS, MMPROJ, MODEL, N_CTX, TEXT, THREADS, app, load_model, note, print_json,
                  stderr)


@app.command()
def query(
    image: Path = typer.Argument(..., help="The image."),
    question: str = typer.Argument(..., help="The question about it."),
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    max_tokens: Optional[int] = MAX_TOKENS,
    threads: Optional[int] = THREADS,
    n_ctx: Optional[int] = N_CTX,
    low_ram: bool = LOW_RAM,
    as_json: bool = JSON,
):
    """Answer one question about one image."""
    from moondream_cpp.image import load_image

    picture = load_image(image)
    md = load_model(model, text, mmproj, n_threads=threads, n_ctx=n_ctx, low_ram=low_ram)
    a = md.query(picture, question, max_tokens=max_tokens)
    if as_json:
        print_json({"image": str(image), "question": question, "answer": a.text, "finish_reason": a.finish_reason,
                    "timings": a.timings})
    else:
        typer.echo(a.text)


@app.command()
def caption(
    images: List[Path] = typer.Argument(..., help="One or more images."),
    length: str = typer.Option("normal", "--length", help="short or normal."),
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    max_tokens: Optional[int] = MAX_TOKENS,
    threads: Optional[int] = THREADS,
    n_ctx: Optional[int] = N_CTX,
    low_ram: bool = LOW_RAM,
    as_json: bool = JSON,
):
    """Caption images: the model loads once; several images get a progress bar and one line each."""
    from moondream_cpp import spec
    from moondream_cpp.errors import MoondreamError

    if length not in spec.CAPTION_QUESTIONS:
        raise MoondreamError(f"--length must be one of {', '.join(spec.CAPTION_QUESTIONS)}, not {length!r}")
    md = load_model(model, text, mmproj, n_threads=threads, n_ctx=n_ctx, low_ram=low_ram)
    failed = 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("captioning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr(), transient=True, disable=len(images) == 1) as bar:
        task = bar.add_task("captioning", total=len(images))
        for img in images:
            try:
                a = md.caption(img, length, max_tokens=max_tokens)
            except ImageError as e:
                failed += 1
                if as_json:
                    print_json({"image": str(img), "error": str(e)})
                else:
                    note(f"error: {e}")
                bar.advance(task)
                continue
            if as_json:
                print_json({"image": str(img), "caption": a.text, "finish_reason": a.finish_reason,
                            "timings": a.timings})
            elif len(images) == 1:
                typer.echo(a.text)
            else:
                sys.stdout.write(f"{img}: {a.text}\n")
                sys.stdout.flush()
            bar.advance(task)
    if failed:
        raise typer.Exit(ImageError.exit_code)
