"""`moondream-cpp bench`: thin over moondream_cpp.bench (measure) and moondream_cpp.bench.report (write)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import THREADS, app, note



@app.command()
def bench(
    work: Path = typer.Option(Path("benchmarks/work"), "--work", file_okay=False,
                              help="Where the random full-size models are built (about 12 GB; reused by later runs)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Fresh processes per variant (the median is reported)."),
    threads: Optional[int] = THREADS,
    no_torch: bool = typer.Option(False, "--no-torch", help="Skip the PyTorch reference runs."),
    results: Path = typer.Option(Path("benchmarks/results"), "--results", file_okay=False,
                                 help="Where bench.json and bench.png go."),
    docs: Optional[Path] = typer.Option(Path("docs/performance.md"), "--docs", dir_okay=False,
                                        help="Markdown file whose bench table is replaced."),
):
    """Speed and memory of full-size moondream on this machine: every GGUF variant, PyTorch fp32/bf16 and native
    llama-bench, side by side, with the memory roofline."""
    import json

    from moondream_cpp import bench as b
    from moondream_cpp.bench.report import write

    res = b.run(work, repeats=repeats, threads=threads, with_torch=not no_torch, log=note)
    cmd = "moondream-cpp bench" + (f" --repeats {repeats}" if repeats != 3 else "") + (
        f" --threads {threads}" if threads else "") + (" --no-torch" if no_torch else "")
    res = write(res, results, docs, cmd)
    typer.echo(json.dumps({"variants": res["variants"], "targets": res["targets"]}, indent=1))
