"""Model management: `pull`, `list`, `rm`, `info` (thin over moondream_cpp.store, registry and model_info)."""
from __future__ import annotations

from typing import Optional

import typer

from moondream_cpp.registry import QUANTS

from .app import JSON, app, conversion_progress, note, print_json


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


@app.command()
def pull(
    name: str = typer.Argument(..., help="A registry model (see `moondream-cpp list --all`), optionally NAME:QUANT."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help=f"{', '.join(QUANTS)} (default: the model's "
                                        "own)."),
    force: bool = typer.Option(False, "--force", help="Download and build it again even when it is stored (a damaged "
                               "model is rebuilt without it)."),
):
    """Download a model (resumable, checksum-verified), converting and quantizing it where needed."""
    from moondream_cpp import store

    with conversion_progress() as on_progress:
        m = store.pull(name, quant, force=force, on_step=lambda s: note(f"{name}: {s}"), on_progress=on_progress)
    note(f"{m.ref}: {_size(m.size)} in {m.directory}")
    typer.echo(m.ref)


@app.command("list")
def list_cmd(
    show_all: bool = typer.Option(False, "--all", "-a", help="Also list registry models not downloaded yet."),
    as_json: bool = JSON,
):
    """Show the models on this machine (the store and the bundled demos), with their sizes, family and kind."""
    from moondream_cpp import store
    from moondream_cpp.gguf_models import bundled_names, demo_pair
    from moondream_cpp.registry import family_of, kind_of, registry

    reg = registry()

    def about(name: str) -> dict:
        e = reg.get(name)
        return {"family": family_of(e), "kind": kind_of(e)} if e else {"family": "?", "kind": "?"}

    rows = []
    for name in bundled_names():
        text, mmproj = demo_pair(name)
        if text.exists() and mmproj.exists():
            rows.append({"model": name, **about(name), "size": text.stat().st_size + mmproj.stat().st_size,
                         "where": str(text.parent), "local": True})
    local = store.local_models()
    rows += [{"model": m.ref, **about(m.name), "size": m.size, "where": str(m.directory), "local": True,
              "damaged": m.damage and f"{m.damage}: {m.repair}", "stale": m.stale} for m in local]
    if show_all:
        have = {m.name for m in local if m.stale is None}
        for name, e in reg.items():
            if e["kind"] != "bundled" and name not in have:
                rows.append({"model": name, **about(name), "size": None, "where": f"{e['repo']}@{e['revision']}",
                             "local": False, "quants": e.get("quants", [])})
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"models ({store.models_dir()})", caption="HF checkpoints are converted by `pull`; `where` is "
                  "the hub repo@revision of a model not downloaded")
    for col in ("model", "family", "kind", "size", "where"):
        t.add_column(col, justify="right" if col == "size" else "left", overflow="fold")  # never cut a revision
    for r in rows:
        where = (escape(r["where"]) + (f"\n[red]damaged[/red]: {escape(r['damaged'])}" if r.get("damaged") else "")
                 + (f"\n[yellow]stale[/yellow]: {escape(r['stale'])}" if r.get("stale") else ""))
        t.add_row(escape(r["model"]), escape(r["family"]), escape(r["kind"]),
                  _size(r["size"]) if r["local"] else "not downloaded", where)
    Console().print(t)


@app.command()
def rm(name: str = typer.Argument(..., help="NAME (every quant) or NAME:QUANT.")):
    """Delete a downloaded model from the store."""
    from moondream_cpp import store

    for m in store.remove(name):
        note(f"removed {m.ref} ({_size(m.size) if m.text.exists() else 'freed'})")


@app.command()
def info(
    model: str = typer.Argument(..., help="A model name, or the path (with a '/') of a directory with a GGUF pair or "
                                "of one GGUF file."),
    as_json: bool = JSON,
):
    """Print a GGUF pair's metadata: architecture, revision, prompt format, stop rule, types and sizes."""
    from moondream_cpp.model_info import describe

    d = describe(model)
    if as_json:
        print_json(d)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=str(model), show_header=False)
    t.add_column("key")
    t.add_column("value")
    for part, fields in d.items():
        if not isinstance(fields, dict):
            t.add_row(part, str(fields))
            continue
        for k, v in fields.items():
            t.add_row(f"{part}.{k}", _size(v) if k == "bytes" else str(v))
    Console().print(t)
