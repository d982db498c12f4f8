"""`detect IMAGE OBJECT` (boxes) and `point IMAGE OBJECT` (points): the 2025 models' region skills, one line per
object (or JSON lines), and with --draw the picture with them drawn."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from moondream_cpp.errors import MoondreamError

from .app import (GPU_LAYERS, LOW_RAM, MAX_CROPS, MMPROJ, MODEL, N_CTX, TEXT, THREADS, app, load_model, note,
                  print_json)

MAX_OBJECTS = typer.Option(None, "--max-objects", min=1, max=50, help="At most N objects (default and most: the "
                           "model's own limit, 50).")
DRAW = typer.Option(None, "--draw", help="Also write the image with them drawn here (.png, .jpg).")
JSON_LINES = typer.Option(False, "--json", help="One JSON object per line instead of plain text.")
FIELDS = {"detect": ("x_min", "y_min", "x_max", "y_max"), "point": ("x", "y")}


def format_line(found: dict, skill: str) -> str:
    """One plain-text line: the fractions of the image's width and height, space-separated, in FIELDS order."""
    return " ".join(f"{found[k]:.4f}" for k in FIELDS[skill])


def run_skill(skill: str, image: Path, obj: str, max_objects, draw, as_json, model, text, mmproj, **load):
    """Everything the two commands share: checks before the model loads, the skill, the output, the drawing."""
    from moondream_cpp import draw as drawing
    from moondream_cpp import skills2025
    from moondream_cpp.image import load_image

    if not obj.strip():
        raise MoondreamError(f"the object to {skill} is empty; name what to look for, e.g. \"face\"")
    if draw is not None:
        drawing.check_output(draw)
    picture = load_image(image)  # a bad image is reported before the model takes time to load
    md = load_model(model, text, mmproj, **load)
    skills2025.check_request(md, skill, obj, max_objects)  # a 2024 model: said before the image is encoded
    found = getattr(md, skill)(picture, obj, max_objects)
    for f in found:
        if as_json:
            print_json({k: f[k] for k in FIELDS[skill]})
        else:
            typer.echo(format_line(f, skill))
    what = "boxes (x_min y_min x_max y_max)" if skill == "detect" else "points (x y)"
    if not as_json:
        note(f"{len(found)} {what} of {obj!r}, as fractions of the image's width and height")
    if draw is not None:
        drawn = drawing.draw_boxes(picture, found) if skill == "detect" else drawing.draw_points(picture, found)
        note(f"drawn on {drawing.save(drawn, draw)}")


@app.command()
def detect(
    image: Path = typer.Argument(..., metavar="IMAGE", help="The image."),
    obj: str = typer.Argument(..., metavar="OBJECT", help="What to find, e.g. \"face\"."),
    max_objects: Optional[int] = MAX_OBJECTS,
    draw: Optional[Path] = DRAW,
    as_json: bool = JSON_LINES,
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    n_ctx: Optional[int] = N_CTX,
    max_crops: Optional[int] = MAX_CROPS,
    low_ram: bool = LOW_RAM,
):
    """Boxes around every OBJECT in the image (2025 models): one line each, x_min y_min x_max y_max as fractions of
    the image's width and height."""
    run_skill("detect", image, obj, max_objects, draw, as_json, model, text, mmproj, n_threads=threads,
              n_gpu_layers=gpu_layers, n_ctx=n_ctx, low_ram=low_ram, max_crops=max_crops)


@app.command()
def point(
    image: Path = typer.Argument(..., metavar="IMAGE", help="The image."),
    obj: str = typer.Argument(..., metavar="OBJECT", help="What to point at, e.g. \"eye\"."),
    max_objects: Optional[int] = MAX_OBJECTS,
    draw: Optional[Path] = DRAW,
    as_json: bool = JSON_LINES,
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    n_ctx: Optional[int] = N_CTX,
    max_crops: Optional[int] = MAX_CROPS,
    low_ram: bool = LOW_RAM,
):
    """A point on every OBJECT in the image (2025 models): one line each, x y as fractions of the image's width and
    height."""
    run_skill("point", image, obj, max_objects, draw, as_json, model, text, mmproj, n_threads=threads,
              n_gpu_layers=gpu_layers, n_ctx=n_ctx, low_ram=low_ram, max_crops=max_crops)
