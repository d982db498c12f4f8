"""The demo v2 scorer proved: training/synth2025's IoU, box matching, caption check and point-in-shape test against
hand-worked cases and against the pixels synth actually draws (never its own _inside), then the accuracy benchmark
(benchmarks/demo2025_accuracy.py) end to end on a tiny random 2025 pair, against the PyTorch reference."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import demo2025_items as bench_items  # noqa: E402
from training import synth, synth2025  # noqa: E402
from training.synth import Obj, Scene  # noqa: E402

# ------------------------------------------------------------------------------------------------------ boxes


@pytest.mark.parametrize("a, b, want", [
    ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),  # 1 shared of 4 + 4 - 1
    ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),
    ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),  # one inside the other
    ((0, 0, 1, 1), (2, 2, 3, 3), 0.0),
    ((0, 0, 1, 1), (1, 0, 2, 1), 0.0),  # touching edges share no area
    ((0.1, 0.2, 0.5, 0.6), (0.3, 0.2, 0.7, 0.6), 0.08 / 0.24),  # 0.2 x 0.4 shared of 0.16 + 0.16 - 0.08
    ((0.5, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5), 0.0),  # no area at all
])
def test_iou_of_known_boxes(a, b, want):
    assert synth2025.iou(a, b) == pytest.approx(want, abs=1e-12)
    assert synth2025.iou(b, a) == pytest.approx(want, abs=1e-12)


def test_match_boxes_counts_a_duplicate_prediction_once():
    t0, t1 = (0.0, 0.0, 0.2, 0.2), (0.5, 0.5, 0.7, 0.7)
    near_t1 = (0.52, 0.5, 0.72, 0.7)  # 0.18 x 0.2 shared of 0.044: IoU 0.82
    assert synth2025.match_boxes([t0, t0, near_t1], [t0, t1]) == 2
    assert synth2025.match_boxes([t0, t0], [t0, t1]) == 1  # the second t0 is a false box
    assert synth2025.match_boxes([], [t0]) == 0 and synth2025.match_boxes([t0], []) == 0


def test_match_boxes_threshold_is_inclusive():
    truth = [(0.0, 0.0, 0.2, 0.1)]
    assert synth2025.match_boxes([(0.0, 0.0, 0.1, 0.1)], truth) == 1  # IoU exactly 0.01 / 0.02
    assert synth2025.match_boxes([(0.0, 0.0, 0.099, 0.1)], truth) == 0  # IoU 0.495
    assert synth2025.match_boxes([(0.0, 0.0, 0.099, 0.1)], truth, threshold=0.4) == 1


def test_match_boxes_pairs_by_iou_not_by_order():
    # full-height boxes: IoU is the intervals'. p0 = [2.5, 12.5] overlaps t0 = [0, 10] at 7.5/12.5 = 0.6 and
    # t1 = [4, 14] at 8.5/11.5 = 0.74; p1 = t1 exactly and t0 at 6/14 = 0.43. Taking predictions in order, p0 would
    # take t1 and p1 find nothing; the highest IoU first pairs p1-t1, then p0-t0.
    def box(x0, x1):
        return (x0 / 20, 0.0, x1 / 20, 1.0)

    t0, t1, p0, p1 = box(0, 10), box(4, 14), box(2.5, 12.5), box(4, 14)
    assert synth2025.iou(p0, t0) == pytest.approx(0.6) and synth2025.iou(p0, t1) == pytest.approx(8.5 / 11.5)
    assert synth2025.match_boxes([p0, p1], [t0, t1]) == 2


def drawn_mask(w: int, h: int, objs: list[Obj]) -> np.ndarray:
    """[h, w] bool: the pixels synth painted in each object's colour (a solid background never has those)."""
    img = np.asarray(synth.draw_scene(w, h, objs, "solid", seed=1))
    mask = np.zeros((h, w), bool)
    for o in objs:
        mask |= np.all(img == synth.COLORS[o.color], axis=-1)
    return mask


@pytest.mark.parametrize("shape", synth.SHAPES)
def test_box_is_the_drawn_shape_to_a_pixel(shape):
    w, h = 240, 180
    o = Obj(shape, "purple", True, 0.45, 0.55, 47.3)
    ys, xs = np.nonzero(drawn_mask(w, h, [o]))
    drawn = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)  # pixel i spans [i, i + 1)
    got = synth2025.box(o, w, h)
    assert np.allclose(np.multiply(got, [w, h, w, h]), np.multiply(drawn, [w, h, w, h]), atol=1.5), (got, drawn)


# ------------------------------------------------------------------------------------------------------ captions

RED_CIRCLE, BLUE_SQUARE = Obj("circle", "red", True, 0.25, 0.5, 30), Obj("square", "blue", False, 0.75, 0.5, 15)
TWO = Scene(200, 100, [RED_CIRCLE, BLUE_SQUARE])


@pytest.mark.parametrize("text, want", [
    ("A red circle and a blue square.", True),
    ("A blue square and a red circle.", True),  # order is free
    ("A large red circle on the left and a small blue square on the right.", True),
    ("a RED circle, a blue Square", True),  # case and the final period do not matter
    ("A red circle.", False),  # the square is missing
    ("A red circle, a blue square and a green triangle.", False),  # an invented triangle
    ("A red circle, a red circle and a blue square.", False),  # the circle repeated
    ("A blue circle and a blue square.", False),  # a wrong colour
    ("A circle and a blue square.", False),  # a shape without its colour
    ("Two red circles and a blue square.", False),  # a plural names no object
    ("", False),
])
def test_caption_exact(text, want):
    assert synth2025.caption_exact(text, TWO) is want


def test_caption_exact_of_the_generators_own_captions_and_an_orange():
    scene = Scene(300, 200, [Obj("triangle", "orange", False, 0.8, 0.3, 20), RED_CIRCLE, BLUE_SQUARE])
    assert synth2025.short_caption(scene) == "A red circle, a blue square and an orange triangle."
    for length in ("short", "normal"):
        assert synth2025.caption_exact(synth2025.CAPTIONS[length](scene), scene)
    assert synth2025.caption_exact("An orange triangle, a red circle and a blue square.", scene)


def test_caption_exact_of_a_glyph():
    letter = Scene(120, 100, [], "K", (10, 10, 60, 70))
    number = Scene(120, 100, [], "7", (10, 10, 60, 70))
    assert synth2025.caption_exact("The letter K.", letter)
    assert synth2025.caption_exact("The letter K", letter)
    assert not synth2025.caption_exact("The letter X.", letter)
    assert not synth2025.caption_exact("", letter)
    assert synth2025.caption_exact("The number 7.", number) and not synth2025.caption_exact("The number 1.", number)
    assert synth2025.short_caption(letter) == "The letter K." and synth2025.normal_caption(number) == "The number 7."


def test_a_glyph_caption_that_invents_a_shape_is_not_exact():
    letter = Scene(120, 100, [], "K", (10, 10, 60, 70))
    assert not synth2025.caption_exact("A red circle and the letter K.", letter)


# ------------------------------------------------------------------------------------------------------ points

TRIANGLES = [(200, 160, 0.5, 0.5, 50.0), (200, 160, 0.5, 0.5, 47.3), (310, 150, 0.37, 0.55, 33.6)]


def pixel_inside(o: Obj, i: int, j: int, w: int, h: int) -> bool:
    """synth2025.inside at the centre of pixel (i, j)."""
    return synth2025.inside(o, (i + 0.5) / w, (j + 0.5) / h, w, h)


def edge_band(mask: np.ndarray) -> np.ndarray:
    """Pixels with a differently painted pixel among their 8 neighbours."""
    p = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= p[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w] != mask
    return out


@pytest.mark.parametrize("shape", synth.SHAPES)
def test_inside_agrees_with_the_drawn_pixels_off_the_edge(shape):
    """Every pixel centre more than a pixel from the drawn outline is judged as painted."""
    for w, h, cx, cy, r in TRIANGLES:
        o = Obj(shape, "green", True, cx, cy, r)
        mask = drawn_mask(w, h, [o])
        judged = np.array([[pixel_inside(o, i, j, w, h) for i in range(w)] for j in range(h)])
        wrong = (judged != mask) & ~edge_band(mask)
        assert not wrong.any(), np.argwhere(wrong)[:5]
        assert (judged & mask).sum() > 0.9 * mask.sum()


def triangle_edges(mask: np.ndarray) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(last painted pixel, the pixel one further out) at the apex, the base and both slanted sides."""
    ys, xs = np.nonzero(mask)
    col = int(round(xs.mean()))
    rows = np.nonzero(mask[:, col])[0]
    top, bottom = int(rows.min()), int(rows.max())
    mid = (top + bottom) // 2
    row = np.nonzero(mask[mid])[0]
    return [((col, top), (col, top - 1)), ((col, bottom), (col, bottom + 1)),
            ((int(row.min()), mid), (int(row.min()) - 1, mid)), ((int(row.max()), mid), (int(row.max()) + 1, mid))]


def test_point_in_a_drawn_triangle_and_outside_it_away_from_the_edge():
    for w, h, cx, cy, r in TRIANGLES:
        o = Obj("triangle", "green", True, cx, cy, r)
        mask = drawn_mask(w, h, [o])
        for (i, j), (oi, oj) in triangle_edges(mask):
            assert mask[j, i] and not mask[oj, oi]
            # three pixels in from the outline (the apex is thin), and three out: never in doubt
            di, dj = 3 * (i - oi), 3 * (j - oj)
            assert mask[j + dj, i + di] and pixel_inside(o, i + di, j + dj, w, h)
            assert not mask[oj - dj, oi - di] and not pixel_inside(o, oi - di, oj - dj, w, h)


def test_point_on_the_last_painted_pixel_is_inside_and_one_pixel_further_is_not():
    for w, h, cx, cy, r in TRIANGLES:
        o = Obj("triangle", "green", True, cx, cy, r)
        mask = drawn_mask(w, h, [o])
        for (i, j), (oi, oj) in triangle_edges(mask):
            assert pixel_inside(o, i, j, w, h), ("painted", i, j)
            assert not pixel_inside(o, oi, oj, w, h), ("not painted", oi, oj)


def test_match_points_uses_each_point_once():
    scene = TWO
    circle, square = (0.25, 0.5), (0.75, 0.5)  # the centres
    outside = (0.5, 0.1)
    assert synth2025.match_points([circle, square], scene.objs, scene) == 2
    assert synth2025.match_points([circle, circle], scene.objs, scene) == 1  # one object holds both
    assert synth2025.match_points([outside, square], scene.objs, scene) == 1
    assert synth2025.match_points([circle], [BLUE_SQUARE], scene) == 0  # only the objects asked about count
    # the square's half side is 0.9 * 15 = 13.5 px: 13 px right of the centre is on it, 15 px is not
    assert synth2025.match_points([((150 + 13) / 200, 0.5)], [BLUE_SQUARE], scene) == 1
    assert synth2025.match_points([((150 + 15) / 200, 0.5)], [BLUE_SQUARE], scene) == 0


# ------------------------------------------------------------------------------------------------------ benchmark


def test_item_scores_and_their_summary():
    q = synth2025.Task("query", "What color is the circle?", "red", "color")
    assert bench_items.score(q, TWO, " Red. ")["correct"] == 1
    assert bench_items.score(q, TWO, "red circle")["correct"] == 0
    t0, t1 = synth2025.box(RED_CIRCLE, 200, 100), synth2025.box(BLUE_SQUARE, 200, 100)
    d = synth2025.Task("detect", "blue square", boxes=(t1,))
    boxes = [dict(zip(("x_min", "y_min", "x_max", "y_max"), b)) for b in (t1, t1, t0)]
    rec = bench_items.score(d, TWO, boxes)
    assert rec == {"objects": 1, "found": 1, "predicted": 3, "false": 2, "empty": 0, "empty_clean": 0}
    p = synth2025.Task("point", "circle")
    rec_p = bench_items.score(p, TWO, [{"x": 0.25, "y": 0.5}, {"x": 0.75, "y": 0.5}])  # the square's is false
    assert rec_p["found"] == 1 and rec_p["false"] == 1
    none = bench_items.score(synth2025.Task("detect", "green triangle"), TWO, [])
    records = [{"skill": "detect", "set": "seen", "tiling": [1, 1], **rec},
               {"skill": "detect", "set": "seen", "tiling": [2, 2], **none}]
    s = bench_items.report(records)["detect"]
    assert s["all"] == {"queries": 2, "objects": 1, "recall_pct": 100.0, "predicted": 3, "false_boxes_pct": 66.67,
                        "empty_queries": 1, "empty_no_box": 1, "empty_no_box_pct": 100.0}
    assert s["1crop"]["queries"] == 1 and s["multicrop"]["queries"] == 1 and "unseen" not in s


def test_items_are_the_same_for_a_seed_and_differ_between_seeds():
    def texts(seed):
        return [(t.text, t.answer, t.boxes) for _, _, t in bench_items.items(seed, "query", 20)]

    assert texts(1234) == texts(1234) != texts(1235)
    unseen = list(bench_items.items(1234, "detect", 3, "unseen"))
    assert len(unseen) == 3 and all(t.skill == "detect" for _, _, t in unseen)


def test_the_benchmark_end_to_end(pair2025, checkpoint2025, tmp_path):
    """Tiny random weights score near nothing; what counts: one command, JSON on stdout, every skill and group
    scored, and llama.cpp (f32) giving the reference's own outputs on the same items."""
    text, mmproj = pair2025("2025-03-27")
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "demo2025_accuracy.py"), "--text", str(text), "--mmproj",
           str(mmproj), "--reference", str(checkpoint2025("2025-03-27")), "--n-questions", "2", "--n-captions", "1",
           "--n-detect", "2", "--n-point", "1", "--n-unseen", "1", "--max-objects", "2", "--threads", "2",
           "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert json.loads(out.read_text()) == result
    assert result["revision"] == "2025-03-27" and result["seed"] == 1234
    for side in ("llama_cpp", "pytorch_reference"):
        assert result[side]["query"]["all"]["n"] == 2 and result[side]["caption"]["all"]["n"] == 1
        assert result[side]["detect"]["all"]["queries"] == 2 and result[side]["point"]["unseen"]["queries"] == 1
    assert sum(result["tilings"].values()) == 2 + 1 + 2 + 1 + 4
    assert result["tiling_mismatches"] == 0
    assert result["same_output_pct"]["detect"] == 100.0 and result["same_output_pct"]["point"] == 100.0
    assert "reference within 1 point" in result["checks"] and "query.all.accuracy_pct >= 95" in result["checks"]
