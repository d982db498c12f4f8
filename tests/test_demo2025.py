"""The bundled default model, the 2025 demo (moondream-demo: gguf_models/demo2025), through the CLI as a real
subprocess with no model option: held-out questions of a seed never used in training, detect and point on the
detect example (the truth computed from the scene as drawn, and the drawn picture checked), captions that name
every object, and the README's detect example."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training import synth, synth2025  # noqa: E402
from training.make_examples import SCENES  # noqa: E402

# never used in training: train_demo2025 draws its images from numpy streams [seed, chunk] (seeds 0 and 10000) and
# its vocabulary from seed 12345
HELDOUT_SEED = 4242
EXAMPLE = "two-circles.png"  # the README's detect example: the circles are all its objects
MAGENTA = (255, 0, 255)  # what --draw outlines boxes and fills points with (moondream_cpp.draw)


def cli(*args, cwd) -> subprocess.CompletedProcess:
    r = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "bundled demo model" in r.stderr  # the default model answered, and said so
    return r


def example_scene() -> synth.Scene:
    w, h, _, objs, _ = SCENES[EXAMPLE]
    return synth.Scene(w, h, objs)


def truth_boxes(name: str, scene: synth.Scene) -> list[tuple]:
    return [synth2025.box(o, scene.w, scene.h) for o in scene.objs if synth2025.matches(name, o)]


def assert_found(pred: list[tuple], truth: list[tuple]):
    """As many boxes as objects, each object's drawn box covered at IoU >= 0.5 by its own prediction."""
    assert len(pred) == len(truth), (pred, truth)
    assert synth2025.match_boxes(pred, truth, 0.5) == len(truth), [
        [round(synth2025.iou(p, t), 2) for t in truth] for p in pred]


def pixel(fraction: float, size: int) -> int:
    """A fraction of the picture's width or height as the pixel drawn there (clamped to the picture)."""
    return int(round(min(max(fraction, 0.0), 1.0) * (size - 1)))


def test_the_example_is_the_scene_it_claims_and_takes_several_crops():
    """The example holds make_examples' scene (so the truth below is the picture's): each shape's own pixels in its
    colour (the file predates synth's current noise, so the background differs from a fresh draw), larger than one
    112-px crop, with two circles."""
    w, h, style, objs, _ = SCENES[EXAMPLE]
    shown = Image.open(ROOT / "examples" / EXAMPLE).convert("RGB")
    assert shown.size == (w, h) and min(w, h) > 112 and [o.shape for o in objs] == ["circle", "circle"]
    for o in objs:
        mask = synth.draw_scene(w, h, [o], "solid", seed=1)  # the shape alone on a plain background
        inner = [(x, y) for x in range(w) for y in range(h)
                 if (x - o.cx * w) ** 2 + (y - o.cy * h) ** 2 <= (0.8 * o.r) ** 2]
        assert inner and all(shown.getpixel(p) == synth.COLORS[o.color] == mask.getpixel(p) for p in inner)


def test_forty_heldout_questions_through_the_cli(tmp_path):
    """40 held-out questions (synth2025's query tasks, seed 4242), most images multi-crop: at least 95% right."""
    rng = np.random.default_rng(HELDOUT_SEED)
    rows, multi = [], 0
    while len(rows) < 40:
        img, scene = synth2025.make_image(rng)
        task = synth2025.heldout_task(rng, scene, "query")
        if task is None:
            continue
        name = f"{len(rows):03d}.png"
        img.save(tmp_path / name)
        multi += min(img.size) > 112  # both sides past one crop (112 px less its margins, plus them): several
        rows.append({"image": name, "question": task.text, "answers": [task.answer], "type": task.kind})
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cli("eval", data, "--json", cwd=tmp_path)
    report = json.loads(r.stdout)
    print(f"demo v2 on 40 held-out questions ({multi} images over 112 px):", report["overall"], report["by_type"])
    assert report["overall"]["n"] == 40 and multi >= 20
    assert report["overall"]["vqa"] >= 95.0


@pytest.mark.parametrize("name", ["circle", "purple circle"])
def test_detect_finds_the_circles_and_draws_their_boxes(name, tmp_path):
    scene = example_scene()
    out = tmp_path / "boxes.png"
    r = cli("detect", ROOT / "examples" / EXAMPLE, name, "--draw", out, "--json", cwd=tmp_path)
    found = [json.loads(line) for line in r.stdout.splitlines()]
    pred = [(b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in found]
    assert_found(pred, truth_boxes(name, scene))
    # the drawing: the picture with a magenta outline on each box's four edges, the shape inside left as it was
    drawn = Image.open(out).convert("RGB")
    source = Image.open(ROOT / "examples" / EXAMPLE).convert("RGB")
    assert drawn.size == source.size == (scene.w, scene.h)
    for x0, y0, x1, y1 in pred:
        left, right = pixel(x0, scene.w), pixel(x1, scene.w)
        top, bottom = pixel(y0, scene.h), pixel(y1, scene.h)
        mx, my = (left + right) // 2, (top + bottom) // 2
        for edge in ((left, my), (right, my), (mx, top), (mx, bottom)):
            assert drawn.getpixel(edge) == MAGENTA != source.getpixel(edge), edge
        assert drawn.getpixel((mx, my)) == source.getpixel((mx, my))


@pytest.mark.parametrize("name", ["circle", "purple circle"])
def test_point_puts_one_point_on_each_and_draws_it(name, tmp_path):
    scene = example_scene()
    out = tmp_path / "points.png"
    r = cli("point", ROOT / "examples" / EXAMPLE, name, "--draw", out, "--json", cwd=tmp_path)
    points = [(p["x"], p["y"]) for p in map(json.loads, r.stdout.splitlines())]
    objs = [o for o in scene.objs if synth2025.matches(name, o)]
    assert len(points) == len(objs)
    for o in objs:  # each object holds exactly one of the points
        assert sum(synth2025.inside(o, x, y, scene.w, scene.h) for x, y in points) == 1, (o, points)
    drawn = Image.open(out).convert("RGB")
    for x, y in points:
        assert drawn.getpixel((pixel(x, scene.w), pixel(y, scene.h))) == MAGENTA


def test_captions_name_every_object(tmp_path):
    """The example's short and normal captions, and 10 held-out images' (seed 4242), name every object with its
    colour and shape and invent none (synth2025.caption_exact): the example's both, at least 18 of the 20 others."""
    scene = example_scene()
    rng = np.random.default_rng([HELDOUT_SEED, 1])
    scenes = {}
    for i in range(10):
        img, s = synth2025.make_image(rng)
        img.save(tmp_path / f"{i:02d}.png")
        scenes[str(tmp_path / f"{i:02d}.png")] = s
    exact = 0
    for length in ("short", "normal"):
        r = cli("caption", ROOT / "examples" / EXAMPLE, "--length", length, cwd=tmp_path)
        assert synth2025.caption_exact(r.stdout.strip(), scene), (length, r.stdout)
        out = tmp_path / f"{length}.jsonl"
        cli("caption", *scenes, "--length", length, "--out", out, cwd=tmp_path)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(x["path"] for x in records) == sorted(scenes)
        for x in records:
            ok = synth2025.caption_exact(x["answer"], scenes[x["path"]])
            exact += ok
            print(length, ok, repr(x["answer"]), "truth:", synth2025.CAPTIONS[length](scenes[x["path"]]))
    assert exact >= 18


def test_readme_detect_example_finds_the_circles_it_shows(tmp_path):
    """The README's second example (after the first command): its command, run as written, prints one box per
    circle of the example (IoU >= 0.5) and writes the drawing; the boxes the README shows are right as well."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(\S*moondream-cpp detect (\S+) \"(\w+)\" --draw (\S+))\n```\n\nprints\n\n```\n"
                      r"((?:[-\d. ]+\n)+)```", readme)
    assert block, "the README's detect example (command, then what it prints) is missing"
    command, image, name, out = block.group(1, 2, 3, 4)
    assert block.start() > readme.index("```bash\n") and image == f"examples/{EXAMPLE}" and out == "boxes.png"
    truth = truth_boxes(name, example_scene())
    shown = [tuple(map(float, line.split())) for line in block.group(5).splitlines()]
    assert_found(shown, truth)
    r = cli("detect", ROOT / image, name, "--draw", out, cwd=tmp_path)
    printed = [tuple(map(float, line.split())) for line in r.stdout.splitlines()]
    assert_found(printed, truth)
    assert (tmp_path / out).is_file()
    # within two of the 1024 coordinate bins: what the README shows is what it prints
    assert np.allclose(printed, shown, atol=2.5e-3), "refresh the README's detect output: it prints other boxes now"
