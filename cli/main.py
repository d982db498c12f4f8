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
    raise MoondreamError("no model given: pass --model DIR (a folder with a text + mmproj GGUF pair) or "
                         "--text T.gguf --mmproj M.gguf; `moondream-cpp convert` makes a pair from a checkpoint")


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
    md = load_model(model, text, mmproj, n_threads=threads, n_ctx=n_ctx, revision=revision)
    enc = md.encode_image(image)
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
