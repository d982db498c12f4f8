"""The `moondream-cpp` command: a thin typer layer over the library (moondream_cpp and moondream_cpp.convert)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from moondream_cpp.convert.quantize import MMPROJ_TYPES, TEXT_TYPES
from moondream_cpp.errors import MoondreamError
from moondream_cpp.spec2025 import REVISIONS_2025

from . import bench, chat, models, oneshot, regions, serve  # noqa: F401  (they register their commands on app)
from .app import GPU_LAYERS, JSON, LOW_RAM, MMPROJ, MODEL, TEXT, THREADS, app, conversion_progress, load_model, stderr


@app.command()
def convert(
    checkpoint_dir: Path = typer.Argument(..., help="HF moondream checkpoint directory (config.json, "
                                          "model.safetensors, tokenizer.json)."),
    out_dir: Path = typer.Option(..., "-o", "--out-dir", help="Where to write the GGUF pair."),
    text_type: str = typer.Option("f16", help="Text model type: " + ", ".join(TEXT_TYPES) + "."),
    mmproj_type: str = typer.Option("f16", help="Vision projector type: " + ", ".join(MMPROJ_TYPES) + "."),
    revision: Optional[str] = typer.Option(None, help="Source revision when config.json does not say "
                                           "(moondream1, 2024-03-04 ... 2024-05-08); required for 2025 checkpoints: "
                                           + ", ".join(REVISIONS_2025) + "."),
    name: Optional[str] = typer.Option(None, help="File name stem (default: the checkpoint directory name)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="2025 checkpoints: the tokenizer.json to use "
                                             "(default: the checkpoint's own; for 2025-06-21, moondream/starmie-v1's "
                                             "at CHECKPOINT/starmie-v1/tokenizer.json, where pull puts it)."),
):
    """Convert an HF moondream checkpoint into a text GGUF + mmproj GGUF pair."""
    from moondream_cpp.convert import convert as do_convert

    with conversion_progress() as on_progress:
        out = do_convert(checkpoint_dir, out_dir, text_type, mmproj_type, revision, name, tokenizer,
                         on_progress=on_progress)
    typer.echo(str(out.text))
    typer.echo(str(out.mmproj))


@app.command("eval")
def eval_cmd(
    data: Path = typer.Argument(..., help="JSON lines: {image, question, answers[, type]} (image paths relative "
                                "to the file)."),
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    reference: Optional[Path] = typer.Option(None, "--reference", help="Evaluate the PyTorch reference model on "
                                             "this HF checkpoint directory instead (needs the [torch] extra)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N questions."),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, help="Answer length limit."),
    as_json: bool = JSON,
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Also write every prediction here "
                                               "(JSON lines)."),
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    low_ram: bool = LOW_RAM,
):
    """Score a model on VQA-format questions: VQAv2 normalisation, min(matches/3,1) accuracy, per type."""
    import json

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from moondream_cpp.evaluate import evaluate, read_jsonl

    rows = read_jsonl(data, limit)
    if reference is not None:
        try:
            from moondream_cpp.reference import ReferenceMoondream
        except ImportError:
            raise MoondreamError("--reference needs PyTorch: pip install 'moondream-cpp[torch]'") from None
        from moondream_cpp.image import load_image

        ref = ReferenceMoondream(reference)

        def answer(img, q):
            return ref.generate(load_image(img), q, max_tokens=max_tokens)[1]
        name = f"reference:{reference}"
    else:
        md = load_model(model, text, mmproj, n_threads=threads, n_gpu_layers=gpu_layers, low_ram=low_ram)

        def answer(img, q):
            return md.query(img, q, max_tokens=max_tokens).text
        name = md.name
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=stderr(), transient=True) as bar:
        task = bar.add_task("evaluating", total=len(rows))
        rep = evaluate(answer, rows, progress=lambda: bar.advance(task))
    for img, why in rep.skipped:
        typer.echo(f"skipped {img}: {why}", err=True)
    if predictions:
        predictions.write_text("".join(json.dumps(r) + "\n" for r in rep.rows))
    if as_json:
        typer.echo(json.dumps({"model": name, **rep.to_json()}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{name} on {data.name}")
    for col in ("type", "n", "VQA acc %", "exact %"):
        t.add_column(col, justify="right" if col != "type" else "left")
    for ty, r in rep.by_type.items():
        t.add_row(ty, str(r["n"]), f"{r['vqa']:.1f}", f"{r['exact']:.1f}")
    if rep.overall:
        t.add_row("overall", str(rep.overall["n"]), f"{rep.overall['vqa']:.1f}", f"{rep.overall['exact']:.1f}",
                  style="bold")
    Console().print(t)


def main() -> None:
    try:
        app()  # standalone: click reports usage errors itself (exit 2)
    except MoondreamError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # the environment, not a bug: full disk, no permission, read-only directory
        from moondream_cpp.errors import DiskFullError, os_error_text
        from moondream_cpp.store import disk_full_error

        where = Path(e.filename) if e.filename else Path(".")
        err = disk_full_error(e, where)
        if err is not None:
            typer.echo(f"error: {err}", err=True)
            sys.exit(DiskFullError.exit_code)
        typer.echo(f"error: {os_error_text(e)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
