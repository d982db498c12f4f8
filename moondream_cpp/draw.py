"""Boxes and points drawn onto a picture with PIL, for `detect --draw` and `point --draw`. The model gives fractions
of the image's width and height, unclamped; a pixel coordinate is the fraction times the size, clamped to the picture
for drawing only (what is printed stays the model's own numbers)."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from .errors import MoondreamError

BOX_COLOUR = (255, 0, 255)  # magenta: rare in photos and in the demo's scenes
POINT_COLOUR = (255, 0, 255)
OUTLINE = (255, 255, 255)


def _pixel(fraction: float, size: int) -> int:
    return int(round(min(max(fraction, 0.0), 1.0) * (size - 1)))


def box_pixels(box: dict, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixels of a box in fractions, clamped to the picture, left <= right."""
    x0, x1 = sorted((_pixel(box["x_min"], width), _pixel(box["x_max"], width)))
    y0, y1 = sorted((_pixel(box["y_min"], height), _pixel(box["y_max"], height)))
    return x0, y0, x1, y1


def point_pixels(point: dict, width: int, height: int) -> tuple[int, int]:
    return _pixel(point["x"], width), _pixel(point["y"], height)


def line_width(width: int, height: int) -> int:
    """Thick enough to see on a photo, thin enough for the demo's small scenes."""
    return max(2, round(min(width, height) / 150))


def draw_boxes(image: Image.Image, boxes: list[dict]) -> Image.Image:
    """A copy of `image` (RGB) with each box outlined."""
    out = image.convert("RGB")
    pen = ImageDraw.Draw(out)
    w = line_width(*out.size)
    for box in boxes:
        pen.rectangle(box_pixels(box, *out.size), outline=BOX_COLOUR, width=w)
    return out


def draw_points(image: Image.Image, points: list[dict]) -> Image.Image:
    """A copy of `image` (RGB) with a dot (white-ringed, to show on any colour) at each point."""
    out = image.convert("RGB")
    pen = ImageDraw.Draw(out)
    r = 2 * line_width(*out.size)
    for p in points:
        x, y = point_pixels(p, *out.size)
        pen.ellipse((x - r, y - r, x + r, y + r), fill=POINT_COLOUR, outline=OUTLINE, width=max(1, r // 3))
    return out


def check_output(path: str | os.PathLike) -> Path:
    """The path a drawing will go to, checked before any model work: a known image extension, an existing folder."""
    path = Path(path).expanduser()
    Image.init()
    if path.suffix.lower() not in Image.registered_extensions():
        raise MoondreamError(f"cannot tell an image format from {path.name!r}; end the name with .png or .jpg")
    if not path.parent.is_dir():
        raise MoondreamError(f"cannot write {path}: the folder {path.parent} does not exist")
    return path


def save(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write the drawing (format from the file name, e.g. .png or .jpg); OSErrors (disk full, no permission) are the
    caller's to report."""
    path = check_output(path)
    image.save(path)
    return path
