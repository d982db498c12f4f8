"""The demo v2 tasks on training.synth's scenes: questions, short and normal captions, detect and point.

One source for training (train_demo2025) and scoring (benchmarks/demo2025_accuracy.py): the truth of every task is
computed here from the Scene, in fractions of the image's width and height, as moondream reports regions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw

from . import synth

IMAGE_SIZES = (80, 400)  # long side in px: a demo crop is 112 px, so most images take several crops
SMALL_SIZES = (80, 160)  # long side in px of pictures that mostly fit one crop
SKILLS = ("query", "caption", "detect", "point")


@dataclass(frozen=True)
class Task:
    skill: str  # "query", "caption", "detect" or "point"
    text: str  # the question, the caption length ("short"/"normal") or the object's name
    answer: str = ""  # query and caption: the reference text
    kind: str = ""  # query: the question type (synth.QUESTION_TYPES)
    boxes: tuple = ()  # detect/point: (x_min, y_min, x_max, y_max) fractions, left to right


def make_image(rng, styles=synth.STYLES_TRAIN, sizes=IMAGE_SIZES):
    return synth.make_image(rng, styles, sizes)


def box(o: synth.Obj, w: int, h: int) -> tuple[float, float, float, float]:
    """The drawn shape's bounding box as fractions (synth._draw_shape's geometry)."""
    x, y, r = o.cx * w, o.cy * h, o.r
    if o.shape == "circle":
        x0, y0, x1, y1 = x - r, y - r, x + r, y + r
    elif o.shape == "square":
        x0, y0, x1, y1 = x - 0.9 * r, y - 0.9 * r, x + 0.9 * r, y + 0.9 * r
    else:
        x0, y0, x1, y1 = x - 1.05 * r, y - r, x + 1.05 * r, y + 0.8 * r
    return x0 / w, y0 / h, x1 / w, y1 / h


def inside(o: synth.Obj, x: float, y: float, w: int, h: int) -> bool:
    """Whether the point (x, y), fractions of the image, lands on a pixel the shape paints (pixel i spans
    [i/w, (i+1)/w)). Draws the shape alone: exact where the geometry is half a pixel from deciding."""
    i, j = math.floor(x * w), math.floor(y * h)
    if not (0 <= i < w and 0 <= j < h):
        return False
    canvas = Image.new("RGB", (w, h))
    synth._draw_shape(ImageDraw.Draw(canvas), o, w, h)
    return canvas.getpixel((i, j)) != (0, 0, 0)


def short_caption(scene: synth.Scene) -> str:
    """One sentence: every object's colour and shape, left to right."""
    if scene.kind == "text":
        return f"The {'number' if scene.char.isdigit() else 'letter'} {scene.char}."
    parts = [f"{synth._article(o.color)} {o.color} {o.shape}" for o in sorted(scene.objs, key=lambda o: o.cx)]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return body[0].upper() + body[1:] + "."


def normal_caption(scene: synth.Scene) -> str:
    """Every object with its size, colour, shape and place."""
    if scene.kind == "text":
        return short_caption(scene)
    return synth.caption(scene.objs)


CAPTIONS = {"short": short_caption, "normal": normal_caption}


def region_queries(rng, scene: synth.Scene) -> list[str]:
    """Names to detect/point: a shape ("circle": all circles) or a coloured shape, present or not."""
    objs = scene.objs
    present = [(o.color, o.shape) for o in objs]
    out = [str(rng.choice(synth.SHAPES))]
    if present and rng.random() < 0.75:
        c, s = present[int(rng.integers(len(present)))]
    else:
        c, s = str(rng.choice(list(synth.COLORS))), str(rng.choice(synth.SHAPES))
    out.append(f"{c} {s}")
    return out


def training_queries(rng, scene: synth.Scene) -> list[str]:
    """region_queries, but half the time the shape that appears most: queries that match several objects (where a
    model must find each in turn) are otherwise rare."""
    out = region_queries(rng, scene)
    if scene.objs and rng.random() < 0.5:
        shapes = [o.shape for o in scene.objs]
        out[0] = max(synth.SHAPES, key=shapes.count)
    return out


def matches(name: str, o: synth.Obj) -> bool:
    words = name.split()
    return words[-1] == o.shape and (len(words) == 1 or words[0] == o.color)


def region_task(skill: str, name: str, scene: synth.Scene) -> Task:
    found = sorted((o for o in scene.objs if matches(name, o)), key=lambda o: (o.cx, o.cy))
    return Task(skill, name, boxes=tuple(box(o, scene.w, scene.h) for o in found))


def tasks(rng, scene: synth.Scene, n_questions: int = 3, n_regions: int = 1, queries=region_queries) -> list[Task]:
    """Training tasks for one image: a few questions, one caption, n_regions detects and as many points."""
    out = [Task("query", q, a, t) for t, q, a in synth.questions(rng, scene, n=n_questions, with_captions=False)]
    length = "short" if rng.random() < 0.5 else "normal"
    out.append(Task("caption", length, CAPTIONS[length](scene)))
    for _ in range(n_regions):
        names = queries(rng, scene)
        out.append(region_task("detect", names[int(rng.integers(2))], scene))
        out.append(region_task("point", names[int(rng.integers(2))], scene))
    return out


def heldout_task(rng, scene: synth.Scene, skill: str) -> Task | None:
    """One task of `skill` for scoring (None where the scene has none: a query about a blank image)."""
    if skill == "query":
        qs = synth.questions(rng, scene, n=1, with_captions=False)
        return Task("query", qs[0][1], qs[0][2], qs[0][0]) if qs else None
    if skill == "caption":
        length = "short" if rng.random() < 0.5 else "normal"
        return Task("caption", length, CAPTIONS[length](scene))
    names = region_queries(rng, scene)
    return region_task(skill, names[int(rng.integers(2))], scene)


# ---------------------------------------------------------------------------------------------------------------
# Scoring


def caption_objects(text: str) -> list[tuple[str, str]] | None:
    """(colour, shape) pairs a caption names, in order; None if it names a shape without a colour before it."""
    words = text.lower().replace(",", " ").replace(".", " ").split()
    out = []
    for i, w in enumerate(words):
        if w in synth.SHAPES:
            if i == 0 or words[i - 1] not in synth.COLORS:
                return None
            out.append((words[i - 1], w))
    return out


def caption_exact(text: str, scene: synth.Scene) -> bool:
    """Names every object with its colour and shape and invents none (as multisets); a glyph: the glyph itself."""
    if scene.kind == "text":
        return caption_objects(text) == [] and text.strip().rstrip(".").split()[-1:] == [scene.char]
    got = caption_objects(text)
    return got is not None and sorted(got) == sorted((o.color, o.shape) for o in scene.objs)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(pred: list, truth: list, threshold: float = 0.5) -> int:
    """How many truth boxes a prediction covers at IoU >= threshold, each prediction used once (greedy by IoU)."""
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t = set(), set()
    for v, i, j in pairs:
        if v >= threshold and i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_t)


def match_points(points: list, objs: list, scene: synth.Scene) -> int:
    """How many objects hold a point (each point used once, greedy in order)."""
    used, hit = set(), 0
    for o in objs:
        for i, (x, y) in enumerate(points):
            if i not in used and inside(o, x, y, scene.w, scene.h):
                used.add(i)
                hit += 1
                break
    return hit
