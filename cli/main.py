"""The `moondream-cpp` command: a thin typer layer over the library (moondream_cpp and moondream_cpp.convert)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from moondream_cpp import __version__
from moondream_cpp.errors import MoondreamError

EXIT_CODES = """Exit codes: 0 ok; 1 other user error; 2 bad command line; 3 bad model file or checkpoint;
4 unreadable image; 5 prompt longer than the context; 130 interrupted."""

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help=f"Run moondream, the tiny vision-language model, on llama.cpp.\n\n{EXIT_CODES}")


def _version(value: bool):
    if value:
        typer.echo(f"moondream-cpp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


@app.command()
def convert(
    checkpoint_dir: Path = typer.Argument(..., help="HF moondream checkpoint directory (config.json, "
                                          "model.safetensors, tokenizer.json)."),
    out_dir: Path = typer.Option(..., "-o", "--out-dir", help="Where to write the GGUF pair."),
    text_type: str = typer.Option("f16", help="Text model type: f32, f16, q8_0, q5_k_m, q4_k_m, q5_0, q4_0."),
    mmproj_type: str = typer.Option("f16", help="Vision projector type: f32, f16, q8_0, q5_0, q4_0."),
    revision: Optional[str] = typer.Option(None, help="Source revision when config.json does not say "
                                           "(moondream1, 2024-03-04 ... 2024-05-08)."),
    name: Optional[str] = typer.Option(None, help="File name stem (default: the checkpoint directory name)."),
):
    """Convert an HF moondream checkpoint into a text GGUF + mmproj GGUF pair."""
    from rich.progress import Progress

    from moondream_cpp.convert import convert as do_convert

    with Progress(transient=True, console=_stderr()) as bar:
        task = bar.add_task("converting", total=None)
        out = do_convert(checkpoint_dir, out_dir, text_type, mmproj_type, revision, name,
                         on_tensor=lambda n: bar.update(task, advance=1, description=n))
    typer.echo(str(out.text))
    typer.echo(str(out.mmproj))


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


def load_model(model: Optional[Path], text: Optional[Path], mmproj: Optional[Path], **kw):
    from moondream_cpp import Moondream

    if text and mmproj:
        return Moondream.load(text, mmproj, **kw)
    if model:
        return Moondream.load(model, **kw)
    if text or mmproj:
        raise MoondreamError("pass both --text and --mmproj (or --model DIR holding the pair)")
    from moondream_cpp.gguf_models import DEMO_NOTICE, demo_pair

    text, mmproj = demo_pair()
    if not text.exists():
        raise MoondreamError("no model given and the bundled demo model is missing from this install: pass --model "
                             "DIR (a folder with a text + mmproj GGUF pair) or --text T.gguf --mmproj M.gguf")
    typer.echo(DEMO_NOTICE, err=True)
    return Moondream.load(text, mmproj, **kw)


@app.command()
def chat(
    image: Path = typer.Argument(..., help="The image to talk about."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Answer this one question and exit."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Directory holding a text + mmproj pair."),
    text: Optional[Path] = typer.Option(None, "--text", help="Text model GGUF."),
    mmproj: Optional[Path] = typer.Option(None, "--mmproj", help="Vision projector (mmproj) GGUF."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Answer length limit (default: "
                                             "the revision's)."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy, as the original."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: all available)."),
    n_ctx: int = typer.Option(2048, min=64, help="Context size in tokens."),
    revision: Optional[str] = typer.Option(None, help="Override the prompt format of the file's revision."),
):
    """Ask questions about an image: one with -p, else interactively (one question per line on stdin)."""
    try:
        _chat(image, prompt, model, text, mmproj, max_tokens, temperature, threads, n_ctx, revision)
    except KeyboardInterrupt:  # click would turn it into "Aborted!" with exit code 1
        sys.stdout.write("\n")
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


def _chat(image, prompt, model, text, mmproj, max_tokens, temperature, threads, n_ctx, revision):
    from moondream_cpp.image import load_image

    picture = load_image(image)  # a bad image is reported before the model takes time to load
    md = load_model(model, text, mmproj, n_threads=threads, n_ctx=n_ctx, revision=revision)
    enc = md.encode_image(picture)
    history: list[tuple[str, str]] = []
    interactive = prompt is None
    questions = [prompt] if prompt is not None else _read_questions()
    for q in questions:
        if not q.strip():
            continue
        s = md.query(enc, q, stream=True, max_tokens=max_tokens, history=history, temperature=temperature)
        for piece in s:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if interactive:
            history.append((q, s.answer.text))


@app.command("eval")
def eval_cmd(
    data: Path = typer.Argument(..., help="JSON lines: {image, question, answers[, type]} (image paths relative "
                                "to the file)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Directory holding a text + mmproj pair."),
    text: Optional[Path] = typer.Option(None, "--text", help="Text model GGUF."),
    mmproj: Optional[Path] = typer.Option(None, "--mmproj", help="Vision projector (mmproj) GGUF."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Evaluate the PyTorch reference model on "
                                             "this HF checkpoint directory instead (needs the [torch] extra)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N questions."),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, help="Answer length limit."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Also write every prediction here "
                                               "(JSON lines)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads."),
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
        md = load_model(model, text, mmproj, n_threads=threads)

        def answer(img, q):
            return md.query(img, q, max_tokens=max_tokens).text
        name = md.name
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=_stderr(), transient=True) as bar:
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


def _read_questions():
    tty = sys.stdin.isatty()
    while True:
        if tty:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return
        line = line.rstrip("\n")
        if line.strip() in ("/exit", "/quit"):
            return
        yield line


def main() -> None:
    try:
        app()  # standalone: click reports usage errors itself (exit 2)
    except MoondreamError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
