"""Deterministic synthetic visual question answering: shapes, colours, sizes, counts, positions, text to read.

    python -m training.synth --seed 1234 --n 1000 --out data/heldout   # images + questions.jsonl (VQA format)

The same seed gives the same images and questions on every machine (PIL's bundled font, numpy's PCG64).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (235, 200, 20),
          "purple": (140, 40, 180), "orange": (245, 130, 20)}
SHAPES = ["circle", "square", "triangle"]
CHARS = "ACEFHKLMNRTXY234579"  # a few clearly distinct glyphs (no I/1, O/0, 8/B, S/5 look-alikes)
STYLES_TRAIN = ["solid", "hgradient", "vgradient", "noise", "dark", "checker", "radial"]
STYLES_UNSEEN = ["stripes", "rings"]  # textures never seen in training: the generalisation check
STYLES_ALL = STYLES_TRAIN + STYLES_UNSEEN
STYLE_SETS = {"train": STYLES_TRAIN, "unseen": STYLES_UNSEEN, "all": STYLES_ALL}
SMALL_R, LARGE_R = (0.13, 0.17), (0.25, 0.31)  # object radius as a fraction of the image's shorter side
MAX_ASPECT = 1.6  # images up to 1.6:1 either way, as photos are
INK_GRID = 56  # resolution of a glyph's ink map (the model input sampled every 2 px)
QUESTION_TYPES = ["color", "shape", "count", "yesno", "position", "size", "text"]
NUMBER = {0: "0", 1: "1", 2: "2", 3: "3"}

TEMPLATES = {
    "color": ["What color is the {o}?", "What colour is the {o}?", "Which color is the {o}?",
              "What is the color of the {o}?"],
    "shape": ["What shape is the {c} object?", "What is the {c} shape?", "Which shape is {c}?",
              "What kind of shape is the {c} one?"],
    "count": ["How many {s}s are there?", "How many {s}s are in the image?", "Count the {s}s.",
              "What is the number of {s}s?"],
    "count_all": ["How many shapes are there?", "How many objects are in the image?", "Count the shapes."],
    "yesno": ["Is there {a} {c} {s}?", "Is there {a} {c} {s} in the image?", "Do you see {a} {c} {s}?",
              "Does the image contain {a} {c} {s}?"],
    "lr": ["Is the {o} on the left or the right?", "Is the {o} on the left or right side?",
           "Which side is the {o} on, left or right?"],
    "tb": ["Is the {o} at the top or the bottom?", "Is the {o} in the top or bottom half?",
           "Is the {o} near the top or the bottom?"],
    "larger": ["Which is larger, the {a} or the {b}?", "Which is bigger: the {a} or the {b}?",
               "Which one is larger, the {a} or the {b}?"],
    "smaller": ["Which is smaller, the {a} or the {b}?", "Which is smaller: the {a} or the {b}?"],
    "letter": ["What letter is written?", "What letter is shown in the image?", "Which letter do you see?",
               "Read the letter in the image."],
    "digit": ["What number is written?", "What digit is shown in the image?", "Which number do you see?",
              "Read the number in the image."],
}
CAPTION_QUESTIONS = {"normal": "Describe this image.", "short": "Describe this image in one sentence."}


@dataclass
class Obj:
    shape: str
    color: str
    big: bool
    cx: float  # centre, as a fraction of width / height
    cy: float
    r: float  # radius in pixels

    def name(self, objs):
        if sum(o.shape == self.shape for o in objs) == 1:
            return self.shape
        if sum(o.shape == self.shape and o.color == self.color for o in objs) == 1:
            return f"{self.color} {self.shape}"
        return None


def _background(rng, w, h, style):
    if style == "dark":
        base = rng.integers(15, 75, 3).astype(np.float64)
        return base + rng.normal(0, 4, (h, w, 3))
    base = rng.integers(200, 256, 3).astype(np.float64)
    other = rng.integers(170, 256, 3).astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if style == "solid":
        return np.broadcast_to(base, (h, w, 3)).astype(np.float64)
    if style in ("hgradient", "vgradient"):
        t = (xx / max(1, w - 1)) if style == "hgradient" else (yy / max(1, h - 1))
        return base * (1 - t[..., None]) + other * t[..., None]
    if style == "noise":
        return base + rng.normal(0, 12, (h, w, 3))
    if style == "radial":
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.clip(np.hypot(xx - cx, yy - cy) / max(w, h), 0, 1)
        return base * (1 - t[..., None]) + other * t[..., None]
    if style == "checker":
        cell = int(rng.integers(10, 40))
        mask = ((xx // cell + yy // cell) % 2)[..., None]
        return np.where(mask == 1, other, base)
    if style == "rings":
        cx, cy, period = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 20)
        mask = ((np.hypot(xx - cx, yy - cy) // period) % 2)[..., None]
        return np.where(mask == 1, other, base)
    # stripes
    other = rng.integers(170, 230, 3).astype(np.float64)
    period = int(rng.integers(6, 16))
    mask = (((xx + yy) // period) % 2)[..., None]
    return np.where(mask == 1, other, base)


def _draw_shape(d: ImageDraw.ImageDraw, o: Obj, w, h):
    x, y, r = o.cx * w, o.cy * h, o.r
    fill = COLORS[o.color]
    if o.shape == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif o.shape == "square":
        s = r * 0.9
        d.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    else:
        d.polygon([(x, y - r), (x - r * 1.05, y + r * 0.8), (x + r * 1.05, y + r * 0.8)], fill=fill)


def _place(rng, n, w, h):
    objs = []
    m = min(w, h)
    for _ in range(200):
        if len(objs) == n:
            break
        big = bool(rng.random() < 0.5)
        r = m * (rng.uniform(*LARGE_R) if big else rng.uniform(*SMALL_R))
        cx, cy = rng.uniform(r / w + 0.02, 1 - r / w - 0.02), rng.uniform(r / h + 0.02, 1 - r / h - 0.02)
        if all(np.hypot((cx - o.cx) * w, (cy - o.cy) * h) > (r + o.r) * 1.15 for o in objs):
            objs.append(Obj(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), big, cx, cy, r))
    return objs


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _where(o: Obj) -> str:
    if o.cx < 0.4 or o.cx > 0.6:
        return "on the left" if o.cx < 0.5 else "on the right"
    if o.cy < 0.4 or o.cy > 0.6:
        return "at the top" if o.cy < 0.5 else "at the bottom"
    return "in the middle"


def caption(objs) -> str:
    parts = [f"{'a large' if o.big else 'a small'} {o.color} {o.shape} {_where(o)}"
             for o in sorted(objs, key=lambda o: o.cx)]
    if len(parts) == 1:
        body = parts[0]
    else:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    return body[0].upper() + body[1:] + "."


def draw_scene(w: int, h: int, objs: list[Obj], style: str = "solid", seed: int = 0) -> Image.Image:
    """A hand-specified scene (for examples/ and tests) drawn exactly as the generator draws."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(np.clip(_background(rng, w, h, style), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for o in objs:
        _draw_shape(d, o, w, h)
    return img


@dataclass
class Scene:
    """What is in an image: shapes (objs) or one glyph (char, with its pixel box), and the image size."""

    w: int
    h: int
    objs: list
    char: str | None = None
    box: tuple | None = None  # (x0, y0, x1, y1) of the glyph
    ink: np.ndarray | None = None  # the glyph's ink, INK_GRID x INK_GRID (fraction of each cell covered)

    @property
    def kind(self):
        return "text" if self.char else "shapes"


def image_size(rng, lo=80, hi=360):
    """Sizes of photos, not only squares: the long side lo..hi px, aspect up to 2:1 either way."""
    long_side = int(rng.integers(lo, hi + 1))
    aspect = float(np.exp(rng.uniform(0, np.log(MAX_ASPECT))))
    short = max(48, int(round(long_side / aspect)))
    return (long_side, short) if rng.random() < 0.5 else (short, long_side)


def make_image(rng, styles=STYLES_TRAIN, size=(80, 360)):
    """One image and its Scene."""
    w, h = image_size(rng, *size)
    style = str(rng.choice(styles))
    bg = _background(rng, w, h, style)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.25:
        ch = str(rng.choice(list(CHARS)))
        size_px = int(min(w, h) * rng.uniform(0.45, 0.7))
        font = ImageFont.load_default(size=size_px)
        box = d.textbbox((0, 0), ch, font=font)
        tw, th = box[2] - box[0], box[3] - box[1]
        x = rng.uniform(0, max(1, w - tw)) - box[0]
        y = rng.uniform(0, max(1, h - th)) - box[1]
        if style == "dark":
            color = tuple(int(c) for c in rng.integers(200, 256, 3))
        else:
            color = tuple(int(c) for c in rng.integers(0, 60, 3))
        d.text((x, y), ch, fill=color, font=font)
        mask = Image.new("L", (w, h))
        ImageDraw.Draw(mask).text((x, y), ch, fill=255, font=font)
        ink = np.asarray(mask.resize((INK_GRID, INK_GRID), Image.BOX), np.float32) / 255
        return img, Scene(w, h, [], ch, (x + box[0], y + box[1], x + box[2], y + box[3]), ink)
    objs = _place(rng, int(rng.integers(1, 4)), w, h)
    for o in objs:
        _draw_shape(d, o, w, h)
    return img, Scene(w, h, objs)


def _inside(o: Obj, px, py, w, h):
    """Which of the pixel points (px, py) the shape covers, as _draw_shape draws it."""
    x, y, r = o.cx * w, o.cy * h, o.r
    if o.shape == "circle":
        return (px - x) ** 2 + (py - y) ** 2 <= r * r
    if o.shape == "square":
        return (np.abs(px - x) <= 0.9 * r) & (np.abs(py - y) <= 0.9 * r)
    top, base, half = y - r, y + 0.8 * r, 1.05 * r
    t = (py - top) / (base - top)  # 0 at the apex, 1 at the base
    return (t >= 0) & (t <= 1) & (np.abs(px - x) <= half * t)


def patch_targets(scene: Scene, grid: int, sub: int = 4) -> dict:
    """Training targets per image patch (grid x grid, row-major): the colour, shape and size class of the object
    covering most of the patch (0 = none; shape 4 = glyph), and per-image counts and glyph class."""
    n = grid * sub
    u = (np.arange(n) + 0.5) / n
    px, py = np.meshgrid(u * scene.w, u * scene.h)
    color = np.zeros((grid, grid), np.int64)
    shape = np.zeros((grid, grid), np.int64)
    size = np.zeros((grid, grid), np.int64)
    best = np.full((grid, grid), 0.2)  # a patch needs a fifth of its area covered to belong to an object
    for o in scene.objs:
        cover = _inside(o, px, py, scene.w, scene.h).reshape(grid, sub, grid, sub).mean((1, 3))
        win = cover > best
        best = np.where(win, cover, best)
        color[win] = 1 + list(COLORS).index(o.color)
        shape[win] = 1 + SHAPES.index(o.shape)
        size[win] = 2 if o.big else 1
    if scene.char:
        x0, y0, x1, y1 = scene.box
        cover = ((px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)).reshape(grid, sub, grid, sub).mean((1, 3))
        shape[cover > 0.2] = 4
    counts = [sum(o.shape == s for o in scene.objs) for s in SHAPES] + [len(scene.objs)]
    present = np.zeros((len(COLORS), len(SHAPES)), np.float32)  # which colour-shape pairs the image holds
    for o in scene.objs:
        present[list(COLORS).index(o.color), SHAPES.index(o.shape)] = 1
    return {"color": color.reshape(-1), "shape": shape.reshape(-1), "size": size.reshape(-1),
            "counts": np.array(counts), "char": 1 + CHARS.index(scene.char) if scene.char else 0,
            "present": present.reshape(-1)}


def window_targets(scene: Scene, size: int, win: int = 14, stride: int = 4) -> dict:
    """Targets for every win x win window at `stride` in the model's size x size input (the patch embedding applied
    as a convolution): the colour of the object covering most of the window, and the shape of an object whose
    outline crosses the window (-1 where no outline does: inside a shape, its kind cannot be seen locally)."""
    step = 2  # sample points every 2 px of the model input
    m = size // step
    u = (np.arange(m) * step + step / 2) / size
    px, py = np.meshgrid(u * scene.w, u * scene.h)
    n = (size - win) // stride + 1
    k, s = win // step, stride // step

    def cover(mask):  # fraction of each window's points inside mask, by a summed-area table
        c = np.pad(mask.astype(np.float32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        i = np.arange(n) * s
        return (c[i[:, None] + k, i[None, :] + k] - c[i[:, None], i[None, :] + k] - c[i[:, None] + k, i[None, :]]
                + c[i[:, None], i[None, :]]) / (k * k)

    color = np.zeros((n, n), np.int64)
    shape = np.zeros((n, n), np.int64)  # 0: plain background
    best = np.full((n, n), 0.3)
    for o in scene.objs:
        f = cover(_inside(o, px, py, scene.w, scene.h))
        win_c = f > best
        best = np.where(win_c, f, best)
        color[win_c] = 1 + list(COLORS).index(o.color)
        shape[(f >= 0.9) & (shape == 0)] = -1  # deep inside: no local evidence of the kind
        shape[(f > 0.05) & (f < 0.9)] = 1 + SHAPES.index(o.shape)
    char = np.full((n, n), -1, np.int64)  # the glyph under a window: shape scenes teach nothing about glyphs
    if scene.char:
        x0, y0, x1, y1 = scene.box
        shape[cover((px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)) > 0.05] = -1
        ink = cover(scene.ink) if scene.ink.shape[0] == m else cover(np.asarray(
            Image.fromarray((scene.ink * 255).astype(np.uint8)).resize((m, m), Image.BOX), np.float32) / 255)
        char = np.where(ink > 0.03, 1 + CHARS.index(scene.char), 0)
    return {"wcolor": color, "wshape": shape, "wchar": char}


def questions(rng, facts, n=3, with_captions=True):
    """Up to n (type, question, answer) triples about the image (a Scene)."""
    kind, info = facts.kind, (facts.char or facts.objs)
    if kind == "text":
        t = "digit" if info.isdigit() else "letter"
        out = [("text", str(rng.choice(TEMPLATES[t])), info)]
        if with_captions and rng.random() < 0.5:
            length = "short" if rng.random() < 0.5 else "normal"
            out.append(("caption", CAPTION_QUESTIONS[length], f"The {t if t == 'letter' else 'number'} {info}."))
        return out
    objs: list[Obj] = info
    out = []
    cands = []
    for o in objs:
        nm = o.name(objs)
        if sum(p.shape == o.shape for p in objs) == 1:
            cands.append(("color", str(rng.choice(TEMPLATES["color"])).format(o=o.shape), o.color))
        if sum(p.color == o.color for p in objs) == 1:
            cands.append(("shape", str(rng.choice(TEMPLATES["shape"])).format(c=o.color), o.shape))
        if nm and (o.cx < 0.4 or o.cx > 0.6):
            cands.append(("position", str(rng.choice(TEMPLATES["lr"])).format(o=nm), "left" if o.cx < 0.5 else "right"))
        if nm and (o.cy < 0.4 or o.cy > 0.6):
            cands.append(("position", str(rng.choice(TEMPLATES["tb"])).format(o=nm), "top" if o.cy < 0.5 else "bottom"))
    s = str(rng.choice(SHAPES))
    cands.append(("count", str(rng.choice(TEMPLATES["count"])).format(s=s), NUMBER[sum(o.shape == s for o in objs)]))
    cands.append(("count", str(rng.choice(TEMPLATES["count_all"])), NUMBER[len(objs)]))
    present = {(o.color, o.shape) for o in objs}
    if rng.random() < 0.5:
        c, sh = sorted(present)[int(rng.integers(len(present)))]
        cands.append(("yesno", str(rng.choice(TEMPLATES["yesno"])).format(a=_article(c), c=c, s=sh), "yes"))
    else:
        absent = [(c, sh) for c in COLORS for sh in SHAPES if (c, sh) not in present]
        c, sh = absent[int(rng.integers(len(absent)))]
        cands.append(("yesno", str(rng.choice(TEMPLATES["yesno"])).format(a=_article(c), c=c, s=sh), "no"))
    uniq = [o for o in objs if sum(p.shape == o.shape for p in objs) == 1]
    for i, a in enumerate(uniq):
        for b in uniq[i + 1:]:
            if a.big != b.big:
                big, small = (a, b) if a.big else (b, a)
                first, second = (a, b) if rng.random() < 0.5 else (b, a)
                if rng.random() < 0.6:
                    q = str(rng.choice(TEMPLATES["larger"])).format(a=first.shape, b=second.shape)
                    cands.append(("size", q, big.shape))
                else:
                    q = str(rng.choice(TEMPLATES["smaller"])).format(a=first.shape, b=second.shape)
                    cands.append(("size", q, small.shape))
    # spread over types rather than over candidates, so every type is well represented
    by_type: dict[str, list] = {}
    for c in cands:
        by_type.setdefault(c[0], []).append(c)
    types = list(by_type)
    rng.shuffle(types)
    for t in types[:n]:
        lst = by_type[t]
        out.append(lst[int(rng.integers(len(lst)))])
    if with_captions and rng.random() < 0.5:
        length = "short" if rng.random() < 0.5 else "normal"
        out.append(("caption", CAPTION_QUESTIONS[length], caption(objs)))
    return out


def write_dataset(out: Path, seed: int, n: int, styles=STYLES_ALL) -> Path:
    """n held-out questions (one per image), images as PNG, questions.jsonl in the VQA format."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    i = 0
    while len(rows) < n:
        img, facts = make_image(rng, styles)
        qs = [q for q in questions(rng, facts, n=1, with_captions=False)]
        if not qs:
            continue
        t, q, a = qs[0]
        path = out / "images" / f"{i:05d}.png"
        img.save(path)
        rows.append({"image": f"images/{path.name}", "question": q, "answers": [a], "type": t})
        i += 1
    jsonl = out / "questions.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return jsonl


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--styles", choices=list(STYLE_SETS), default="all",
                    help="backgrounds: those seen in training, unseen ones (stripes, dark), or all")
    a = ap.parse_args()
    print(write_dataset(a.out, a.seed, a.n, STYLE_SETS[a.styles]))


if __name__ == "__main__":
    main()
