"""`moondream-cpp bench --family 2025 --regions` on a scaled 2025 pair: the JSON section it adds (the rest of
bench2025.json and of the markdown left alone), each call's counts against what the skills must do (3 one-row
decodes per detect object, 2 per point object; a warm call evaluates only what follows the cached image prefix),
and the forced run that measures a model which stops at once."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
from typer.testing import CliRunner

from moondream_cpp import Moondream, spec2025
from moondream_cpp.bench import measure_regions2025
from moondream_cpp.bench.models2025 import image_path
from moondream_cpp.crops import select_tiling

MAX_OBJECTS = 2
PER_OBJECT = {"detect": 3, "point": 2}


def test_regions_section_of_bench2025(pair2025, tmp_path):
    from moondream_cpp.cli.main import app

    text, mmproj = pair2025("2025-04-14", "f32", "f32")
    picture = image_path(tmp_path, 378, 378)
    results, doc = tmp_path / "res", tmp_path / "perf.md"
    results.mkdir()
    earlier = {"answers": {"q4_k_m + q8_0 mmproj": {"cold_s": 28.1}}, "command": "moondream-cpp bench --family 2025"}
    (results / "bench2025.json").write_text(json.dumps(earlier))
    doc.write_text("before\n<!-- bench2025-regions:start -->\nold table\n<!-- bench2025-regions:end -->\nafter\n")
    r = CliRunner().invoke(app, ["bench", "--family", "2025", "--regions", "--text", str(text), "--mmproj",
                                 str(mmproj), "--image", str(picture), "--max-objects", str(MAX_OBJECTS),
                                 "--threads", "2", "--results", str(results), "--docs", str(doc),
                                 "--work", str(tmp_path / "work")])
    assert r.exit_code == 0, r.output
    saved = json.loads((results / "bench2025.json").read_text())
    assert {k: saved[k] for k in earlier} == earlier  # the 2025 bench's own results stay
    (label, entry), = saved["regions"].items()
    assert "error" not in entry, entry
    assert entry["model"]["crop"] == 378 and entry["model"]["text_type"] == "f32" and entry["max_objects"] == 2
    assert "load average" in entry["uptime_before"] and entry["command"].endswith("--max-objects 2 --threads 2")
    (p,) = entry["pictures"]
    assert p["tiling"] == list(select_tiling(378, 378)) == [1, 1] and p["vision_passes"] == 1
    for skill in ("detect", "point"):
        cold, warm = p[skill]["cold"], p[skill]["warm"]
        for c in (cold, warm):
            assert 0 <= c["objects"] <= MAX_OBJECTS and c["decodes"] == PER_OBJECT[skill] * c["objects"]
            assert c["stopped"] == ("max_objects" if c["objects"] == MAX_OBJECTS else "eos")
            if c["objects"]:
                assert abs(c["ms_per_object"] - c["objects_ms"] / c["objects"]) <= 0.01
        # cold: BOS, the image rows and the template all evaluated; warm: the image prefix came from the KV cache
        assert cold["prompt_evaluated"] == cold["prompt_tokens"] > spec2025.PREFIX_ROWS
        assert 0 < warm["prompt_evaluated"] <= warm["prompt_tokens"] - spec2025.PREFIX_ROWS
    text_doc = doc.read_text()
    assert text_doc.startswith("before\n") and text_doc.endswith("after\n") and "old table" not in text_doc
    assert f"| {label} (as given) | 378x378.png (1x1, 1) | detect |" in text_doc


def test_a_model_that_stops_at_once_is_forced_to_max_objects(pair2025, tmp_path):
    """detect's first token made the revision's EOS: cold and warm find nothing, so a forced run measures the
    per-object cost; point is forced only if its own first token is that one too."""
    from moondream_cpp import skills2025

    md = Moondream.load(*pair2025("2025-04-14", "f32", "f32"), n_threads=2)
    try:
        picture = image_path(tmp_path, 378, 378)
        enc = md.encode_image(picture)
        firsts = {}
        for skill in ("detect", "point"):
            md.evaluate(skills2025.prompt_items(md, enc, skill, "circle"), {enc.key: enc})
            firsts[skill] = int(np.argmax(md.context.logits()))
        first = firsts["detect"]
        md.prompting.revision = dataclasses.replace(md.prompting.revision, eos=first)
        rec = measure_regions2025.picture(md, picture, "circle", MAX_OBJECTS)
    finally:
        md.close()
    d = rec["detect"]
    assert d["cold"]["objects"] == d["warm"]["objects"] == 0 and d["cold"]["ms_per_object"] is None
    assert d["forced"]["objects"] == MAX_OBJECTS and d["forced"]["decodes"] == 3 * MAX_OBJECTS
    assert d["forced"]["ms_per_object"] > 0
    point_stops = firsts["point"] == first
    assert ("forced" in rec["point"]) == point_stops
    assert rec["point"]["cold"]["objects"] == (0 if point_stops else MAX_OBJECTS)
    assert md.prompting.revision.eos == first  # the forced run put the swapped revision back


def test_a_2024_model_is_refused_and_nothing_written(converted, tmp_path):
    from moondream_cpp.cli.main import app

    text, mmproj = converted()
    results = tmp_path / "res"
    r = CliRunner().invoke(app, ["bench", "--family", "2025", "--regions", "--text", str(text), "--mmproj",
                                 str(mmproj), "--results", str(results), "--work", str(tmp_path / "work")])
    assert r.exit_code != 0 and "is a 2024 moondream: detect and point need a 2025 pair" in str(r.exception)
    assert not (results / "bench2025.json").exists()
    r = CliRunner().invoke(app, ["bench", "--regions", "--text", str(text), "--mmproj", str(mmproj)])
    assert r.exit_code != 0 and "add --family 2025" in str(r.exception)


def test_repeats_are_combined_field_by_field():
    from moondream_cpp.bench.regions2025 import median_of_runs

    runs = [{"pictures": [{"tiling": [3, 4], "detect": {"cold": {"image_ms": x, "objects": n, "ms_per_object": m,
                                                                 "stopped": s}}}], "uptime_before": u}
            for x, n, m, s, u in [(30.0, 8, 9.5, "max_objects", "a"), (10.0, 0, None, "eos", "b"),
                                  (20.0, 8, 7.5, "max_objects", "c")]]
    cold = {"image_ms": 20.0, "objects": 8, "ms_per_object": 8.5, "stopped": "max_objects"}  # 8.5: of the 2 with one
    assert median_of_runs(runs) == {"pictures": [{"tiling": [3, 4], "detect": {"cold": cold}}], "uptime_before": "a"}
