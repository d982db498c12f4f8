"""Draw the example images in examples/ (hand-placed scenes in the generator's style) and their questions.

    python -m training.make_examples examples [NAME.png ...]   # all, or only the images named

circles.png is the detect/point example (README, tests/test_demo2025.py): two circles and a square, sizes and
placement as the demo v2 was trained on (1-3 objects, radii 0.13-0.31 of the shorter side), 320x240 so the 2025
demo reads it in several 112-px crops. It has no rows in questions.jsonl: those are the answers every demo is held to.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import ImageDraw, ImageFont

from .synth import Obj, draw_scene

SCENES = {
    # name: (width, height, background, objects, questions with answers)
    "shapes.png": (300, 200, "hgradient", [Obj("circle", "red", True, 0.28, 0.55, 44),
                                           Obj("square", "blue", False, 0.75, 0.3, 20),
                                           Obj("triangle", "yellow", False, 0.72, 0.75, 18)],
                   [("What color is the circle?", "red"), ("How many shapes are there?", "3"),
                    ("Is the circle on the left or the right?", "left"),
                    ("Which is larger, the circle or the square?", "circle"),
                    ("What shape is the blue object?", "square")]),
    "two-circles.png": (180, 260, "noise", [Obj("circle", "green", False, 0.3, 0.25, 18),
                                            Obj("circle", "purple", True, 0.55, 0.7, 40)],
                        [("How many circles are there?", "2"), ("Is there a green circle?", "yes"),
                         ("Is the purple circle at the top or the bottom?", "bottom")]),
    "circles.png": (320, 240, "vgradient", [Obj("circle", "red", True, 0.25, 0.6, 66),
                                            Obj("circle", "blue", False, 0.57, 0.27, 36),
                                            Obj("square", "green", False, 0.8, 0.7, 36)], []),
}


def letter_image(ch="K", w=220, h=160):
    img = draw_scene(w, h, [], "solid", seed=3)
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=100)
    box = d.textbbox((0, 0), ch, font=font)
    d.text(((w - box[2] - box[0]) / 2, (h - box[3] - box[1]) / 2), ch, fill=(20, 20, 40), font=font)
    return img


def main(out: Path, only: list[str] | None = None):
    """Draws every example, or only those named (synth's backgrounds have changed since some were drawn: the noise of
    two-circles.png is no longer what it draws, so redrawing all would change pictures whose answers are fixed)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (w, h, style, objs, qa) in SCENES.items():
        if not only or name in only:
            draw_scene(w, h, objs, style, seed=1).save(out / name)
        rows += [{"image": name, "question": q, "answers": [a]} for q, a in qa]
    if not only or "letter.png" in only:
        letter_image().save(out / "letter.png")
    rows.append({"image": "letter.png", "question": "What letter is written?", "answers": ["K"]})
    (out / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples"), sys.argv[2:])
