"""`moondream-cpp chat`: interactive (line editing, history, slash commands, Ctrl-C stops an answer), scripted
(stdin not a terminal: one question per line in, one answer per line out) or one-shot (-p)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from moondream_cpp.errors import MoondreamError

from .app import (GPU_LAYERS, JSON, LOW_RAM, MAX_CROPS, MAX_TOKENS, MMPROJ, MODEL, N_CTX, TEXT, THREADS, about, app,
                  load_model, note, print_json, timings_line)

HELP = """Commands:
  /image PATH      talk about another image (recent images stay encoded); starts a new conversation
  /caption [LENGTH] describe the current image: short, normal (the default) or long (2025 models from
                   2025-03-27); a 2025 caption is not part of the conversation
  /detect OBJECT   boxes around every OBJECT (2025 models): x_min y_min x_max y_max, fractions of the image
  /point OBJECT    a point on every OBJECT (2025 models): x y, fractions of the image
  /clear           forget the conversation so far (the image stays)
  /save FILE       write the transcript as JSON
  /help            this list
  /exit            leave (or Ctrl-D). Ctrl-C stops an answer."""


@app.command()
def chat(
    image: Path = typer.Argument(..., help="The image to talk about."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Answer this one question and exit."),
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    max_tokens: Optional[int] = MAX_TOKENS,
    temperature: Optional[float] = typer.Option(None, min=0.0, help="0 = greedy. Default: the revision's own, as "
                                                "upstream samples: greedy up to 2025-03-27 (every 2024 model "
                                                "included), 0.5 with top-p 0.3 from 2025-04-14."),
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    n_ctx: Optional[int] = N_CTX,
    max_crops: Optional[int] = MAX_CROPS,
    low_ram: bool = LOW_RAM,
    revision: Optional[str] = typer.Option(None, help="Override the prompt format of the file's revision."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print timings after each answer (stderr)."),
    as_json: bool = JSON,
):
    """Ask questions about an image: once with -p, else interactively (type /help), or one per stdin line."""
    try:
        _chat(image, prompt, model, text, mmproj, max_tokens, temperature, threads, gpu_layers, n_ctx, max_crops,
              low_ram, revision, verbose, as_json)
    except KeyboardInterrupt:  # while loading, answering -p or reading a script; click would say "Aborted!"
        sys.stdout.write("\n")
        note("interrupted")
        raise typer.Exit(130)


def _chat(image, prompt, model, text, mmproj, max_tokens, temperature, threads, gpu_layers, n_ctx, max_crops, low_ram,
          revision, verbose, as_json):
    from moondream_cpp.chat import ChatSession
    from moondream_cpp.image import load_image
    from moondream_cpp.options import GenerationOptions

    picture = load_image(image)  # a bad image is reported before the model takes time to load
    md = load_model(model, text, mmproj, n_threads=threads, n_gpu_layers=gpu_layers, n_ctx=n_ctx, low_ram=low_ram,
                    revision=revision, max_crops=max_crops)
    session = ChatSession(md, options=GenerationOptions(max_tokens=max_tokens, temperature=temperature))
    session.set_image(picture, name=str(image))
    out = Output(verbose, as_json)
    if prompt is not None:
        out.answer(session, prompt)
    elif sys.stdin.isatty():
        Repl(session, out).run()
    else:
        out.one_line = True  # scripts read one answer per line
        rc = scripted(session, out)
        if rc:
            raise typer.Exit(rc)


class Output:
    """How answers reach the user: streamed text (plus timings on stderr with --verbose), or one JSON object."""

    def __init__(self, verbose: bool, as_json: bool, one_line: bool = False):
        self.verbose, self.as_json, self.one_line = verbose, as_json, one_line

    def answer(self, session, question: str, caption: str | None = None):
        s = session.caption(caption, stream=True) if caption else session.ask(question, stream=True)
        if self.as_json:
            for _ in s:
                pass
        else:
            for piece in s:
                sys.stdout.write(piece.replace("\n", " ") if self.one_line else piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
        a = s.answer
        if self.as_json:
            print_json({"image": session.image_name, "question": session.turns[-1].question, "answer": a.text,
                        "finish_reason": a.finish_reason, "timings": a.timings})
        elif self.verbose:
            note(timings_line(a.timings))
        return a


    def regions(self, session, skill: str, obj: str):
        """/detect and /point: one line per object (JSON: one object with them all); not part of the conversation."""
        from .regions import FIELDS, format_line

        if not obj:
            raise MoondreamError(f"/{skill} needs an object: /{skill} face")
        found = getattr(session, skill)(obj)
        if self.as_json:
            print_json({"image": session.image_name, skill: obj,
                        "objects" if skill == "detect" else "points": [{k: f[k] for k in FIELDS[skill]}
                                                                       for f in found]})
            return found
        for f in found:
            sys.stdout.write(format_line(f, skill) + "\n")
        if not found or not self.one_line:
            note(f"{len(found)} found")
        sys.stdout.flush()
        return found


def command(session, out: Output, line: str) -> bool:
    """Run a /command. Returns False when the chat should end."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/help":
        note(HELP)
    elif name == "/image":
        if not arg:
            raise MoondreamError("/image needs a path: /image photo.jpg")
        path = Path(arg).expanduser()
        enc = session.set_image(path, name=str(path))
        how = "from the cache" if session._image_timings["image_cached"] else f"encoded in {enc.encode_ms:.0f} ms"
        note(f"image: {path} ({how}); new conversation")
    elif name == "/caption":
        length = arg or "normal"
        session.model.caption_items_check(length, "/caption's length")  # the lengths this model has, if not that
        out.answer(session, "", caption=length)
    elif name in ("/detect", "/point"):
        out.regions(session, name[1:], arg)
    elif name == "/clear":
        session.clear()
        note("conversation cleared")
    elif name == "/save":
        if not arg:
            raise MoondreamError("/save needs a file name: /save chat.json")
        note(f"saved {session.save(arg)}")
    else:
        raise MoondreamError(f"unknown command {name}; /help lists the commands")
    return True


class Repl:
    def __init__(self, session, out: Output):
        self.session, self.out = session, out

    def _readline(self):
        """Line editing and a persistent history where the platform has readline."""
        try:
            import readline
        except ImportError:
            return None
        from moondream_cpp.store import home

        hist = home() / "chat_history"
        try:
            hist.parent.mkdir(parents=True, exist_ok=True)
            readline.read_history_file(hist)
        except OSError:
            pass
        readline.set_history_length(1000)
        return lambda: _save_history(readline, hist)

    def run(self):
        save = self._readline()
        note(f"Chatting about {self.session.image_name} with {about(self.session.model)}. /help for commands, "
             "Ctrl-D or /exit to leave.")
        try:
            while True:
                try:
                    line = input("> ")
                except EOFError:
                    sys.stdout.write("\n")
                    return
                except KeyboardInterrupt:  # at the prompt: drop the line, as a shell does
                    sys.stdout.write("\n")
                    continue
                if not line.strip():
                    continue
                try:
                    if line.lstrip().startswith("/"):
                        if not command(self.session, self.out, line):
                            return
                    else:
                        self.out.answer(self.session, line.strip())
                except KeyboardInterrupt:
                    sys.stdout.write("\n")
                    note("[answer stopped]")
                except MoondreamError as e:
                    note(f"error: {e}")
        finally:
            if save:
                save()


def _save_history(readline, hist):
    try:
        readline.write_history_file(hist)
    except OSError:
        pass


def scripted(session, out: Output) -> int:
    """stdin is a pipe or file: every line a question (or /command), every answer one line. Returns the exit code:
    0, or the code of the first error (the rest of the input is still answered)."""
    rc = 0
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not command(session, out, line):
                    break
            else:
                out.answer(session, line)
        except MoondreamError as e:
            note(f"error: {e}")
            rc = rc or e.exit_code
    return rc
