"""`moondream-cpp bench`: thin over moondream_cpp.bench (measure) and moondream_cpp.bench.report (write)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import MMPROJ, TEXT, THREADS, app, note


@app.command()
def bench(
    work: Optional[Path] = typer.Option(None, "--work", file_okay=False,
                                        help="Where the random full-size models are built (about 12 GB; reused by "
                                        "later runs). Default: bench/work in the model store's folder "
                                        "($MOONDREAM_CPP_HOME, else ~/.cache/moondream-cpp)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", min=1, help="Fresh processes per variant (the median is "
                                          "reported). Default: 3; 2 with --family 2025."),
    family: str = typer.Option("2024", "--family", help="2024: moondream1/2024-shaped models, every GGUF type, "
                               "native tools, the roofline (about an hour). 2025: moondream2 2025-04-14 (multi-crop, "
                               "prefix attention) against PyTorch fp32/bf16: cold answer and follow-up on a 1024x768 "
                               "picture, image encode by crop count, peak RSS (about 35 minutes on 2 cores; about 8 "
                               "GB of models); writes bench2025.json."),
    sweep_repeats: int = typer.Option(1, "--sweep-repeats", min=0, help="--family 2025: fresh processes per "
                                      "picture of the encode sweep (0: no sweep; the 1024x768 point comes from the "
                                      "answers)."),
    threads: Optional[int] = THREADS,
    no_torch: bool = typer.Option(False, "--no-torch", help="Skip the PyTorch reference runs."),
    results: Optional[Path] = typer.Option(None, "--results", file_okay=False,
                                           help="Where bench.json and bench.png (bench2025.json) go. Default: "
                                           "bench/results in that same folder."),
    docs: Optional[Path] = typer.Option(None, "--docs", dir_okay=False,
                                        help="Also write the results table into this markdown file, between "
                                        "<!-- bench:start --> and <!-- bench:end --> (bench2025:start/end for "
                                        "--family 2025; appended where those are missing). Default: no markdown."),
    regions: bool = typer.Option(False, "--regions", help="--family 2025: time detect and point instead (one call "
                                 "each on a one-crop and a multi-crop picture, cold and warm; image, prompt and "
                                 "per-object ms) on --model or --text/--mmproj, default the bench's own full-size "
                                 "pairs; adds to bench2025.json's \"regions\" (bench2025-regions markers in --docs)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="--regions: a model name or a pair's "
                                        "directory, as the other commands take it (the demo: moondream-demo). "
                                        "Default: the bench's own random full-size pairs."),
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    image: Optional[List[Path]] = typer.Option(None, "--image", help="--regions: a picture to time (repeatable). "
                                               "Default: gradients of one crop and of 3x4 crops."),
    max_objects: int = typer.Option(8, "--max-objects", min=1, max=50, help="--regions: objects per call at most."),
):
    """Speed and memory of full-size moondream on this machine: every GGUF variant, PyTorch fp32/bf16 and native
    llama-bench, side by side, with the memory roofline. Takes most of an hour; prints where the results went.
    --family 2025: the 2025 moondream2 against PyTorch fp32/bf16 instead."""
    import json

    from moondream_cpp import bench as b
    from moondream_cpp.errors import MoondreamError
    from moondream_cpp.outputs import writable_dir

    if family not in ("2024", "2025"):
        raise MoondreamError(f"--family {family[:20]!r}: choose 2024 or 2025")
    if regions:
        return _bench_regions(family, work, results, docs, model, text, mmproj, image, max_objects, repeats or 1,
                              threads)
    if family == "2025":
        return _bench_2025(work, repeats or 2, sweep_repeats, threads, no_torch, results, docs)
    repeats = repeats or 3
    from moondream_cpp.bench.report import write

    # both folders checked before an hour of work, the work folder first (it is the one that holds 12 GB)
    work = writable_dir(work or b.default_work_dir(), "--work")
    results = writable_dir(results or b.default_results_dir(), "--results")
    if docs is not None:
        writable_dir(docs.parent, "--docs", for_file=True)
    note(f"models in {work} (about 12 GB, reused by later runs)")
    res = b.run(work, repeats=repeats, threads=threads, with_torch=not no_torch, log=note)
    cmd = "moondream-cpp bench" + (f" --repeats {repeats}" if repeats != 3 else "") + (
        f" --threads {threads}" if threads else "") + (" --no-torch" if no_torch else "")
    res = write(res, results, docs, cmd)
    typer.echo(json.dumps({"variants": res["variants"], "targets": res["targets"]}, indent=1))
    # no bench.png where matplotlib is missing
    written = [str(f) for f in (results / "bench.json", results / "bench.png") if f.exists()]
    note("results: " + ", ".join(written) + (f"; table in {docs}" if docs else ""))


def _bench_2025(work, repeats, sweep_repeats, threads, no_torch, results, docs):
    import json

    from moondream_cpp import bench as b
    from moondream_cpp.bench import run2025
    from moondream_cpp.bench.report2025 import write
    from moondream_cpp.outputs import writable_dir

    work = writable_dir(work or b.default_dir() / "work2025", "--work")
    results = writable_dir(results or b.default_results_dir(), "--results")
    if docs is not None:
        writable_dir(docs.parent, "--docs", for_file=True)
    note(f"models in {work} (about 8 GB, reused by later runs)")
    res = run2025.run(work, repeats=repeats, sweep_repeats=sweep_repeats, threads=threads, with_torch=not no_torch,
                      log=note)
    cmd = "moondream-cpp bench --family 2025" + (f" --repeats {repeats}" if repeats != 2 else "") + (
        f" --sweep-repeats {sweep_repeats}" if sweep_repeats != 1 else "") + (
        f" --threads {threads}" if threads else "") + (" --no-torch" if no_torch else "")
    res = write(res, results, docs, cmd)
    typer.echo(json.dumps({"answers": res["answers"], "targets": res["targets"]}, indent=1))
    note(f"results: {results / 'bench2025.json'}" + (f"; table in {docs}" if docs else ""))


def _bench_regions(family, work, results, docs, model, text, mmproj, images, max_objects, repeats, threads):
    from moondream_cpp import bench as b
    from moondream_cpp.bench import regions2025
    from moondream_cpp.errors import MoondreamError
    from moondream_cpp.outputs import writable_dir

    if family != "2025":
        raise MoondreamError("--regions times the 2025 models' detect and point: add --family 2025")
    work = writable_dir(work or b.default_dir() / "work2025", "--work")
    results = writable_dir(results or b.default_results_dir(), "--results")
    if docs is not None:
        writable_dir(docs.parent, "--docs", for_file=True)
    got = regions2025.bench(work, results, docs, model=model, text=text, mmproj=mmproj, images=images,
                            max_objects=max_objects, repeats=repeats, threads=threads, log=note)
    note(f"results: {results / 'bench2025.json'} (\"regions\": {', '.join(got)})" + (f"; table in {docs}" if docs
                                                                                   else ""))
