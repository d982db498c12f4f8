"""A 2025 model whose crop geometry is not upstream's full size (the demo v2's: crop 112, patch 14, so an 8x8 grid
and a 65-row prefix, margin 2, at most 6 crops): the runtime cuts images by the model's own values, read from its
mmproj, and matches the PyTorch reference (moondream_cpp/reference/md2025, which reads them from config.json) in
tiling, crops, embeddings, logits, greedy answers and detect/point bins. The model's max_crops is the default and the
limit; files whose geometry does not hold together are refused before llama.cpp opens them."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from checkpoints2025 import make_checkpoint_2025
from conftest import CLI, rel, rel_logits, scene
from gguf import GGUFValueType
from test_convert2025 import rewrite
from test_region2025 import assert_same_objects, reference_loop, template_ids

from moondream_cpp import Moondream, gguf_check, skills2025, spec2025
from moondream_cpp.convert import convert
from moondream_cpp.crops import CropGeometry, resize_vips_like
from moondream_cpp.errors import CheckpointError, ModelFileError, MoondreamError
from moondream_cpp.reference.md2025 import Reference2025

REVISION = "2025-03-27"  # greedy, log2 size bins, GPT-2 tokenizer: the demo v2's
GEOMETRY = dict(vision_crop_size=112, vision_overlap_margin=2, vision_max_crops=6, vision_enc_n_layers=4,
                text_prefix_attn=65, text_max_context=512)
# W x H -> tiling, worked by hand: margins 2 x 28 px come off, windows are 56 px (8 - 2*2 patches of 14)
IMAGES = {
    "1crop": ((100, 112), (1, 1)),  # h = 56: one window
    "multicrop": ((300, 220), (1, 3)),  # h 164, w 244: min 3x5 = 15 > 6, r = sqrt(6/15): floor(1.9), floor(3.16)
    "square": ((200, 200), (2, 2)),  # h = w = 144: min 3x3 = 9 > 6, r = .816: floor(2.45) each
}
EMBED_TOL, LOGIT_TOL = 1e-3, 1e-3
OBJECT, MAX_OBJECTS = "red circle", 3
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def small_ck(workdir):
    return make_checkpoint_2025(workdir / "ck25-geometry", revision=REVISION, **GEOMETRY)


@pytest.fixture(scope="module")
def small_pair(small_ck, workdir):
    out = convert(small_ck, workdir / "gguf25-geometry", "f32", "f32", revision=REVISION, name="geo25")
    return out.text, out.mmproj


@pytest.fixture(scope="module")
def md(small_pair):
    with Moondream.load(*small_pair, n_threads=2) as model:
        yield model


@pytest.fixture(scope="module")
def ref(small_ck):
    return Reference2025.load(small_ck, revision=REVISION, resize=resize_vips_like)


def test_the_geometry_is_the_models(md, small_ck):
    vision = json.loads((small_ck / "config.json").read_text())["config"]["vision"]
    assert md.multicrop.geometry == CropGeometry(vision["crop_size"], vision["enc_patch_size"],
                                                 vision["overlap_margin"]) == CropGeometry(112, 14, 2)
    assert md.multicrop.geometry.grid == 8 and md.multicrop.geometry.window_px == 56
    assert md.multicrop.max_crops == md.multicrop.model_max_crops == vision["max_crops"] == 6
    assert md.text_info.prefix_rows == 65 and md.mmproj_info.n_patches == 64


@pytest.mark.parametrize("image", list(IMAGES))
def test_crops_and_embeddings_match_the_reference(md, ref, image):
    size, tiling = IMAGES[image]
    img = scene(*size)
    crops, _ = md.multicrop.crops_of(img)
    g, local, ref_tiling = ref.crops(img)
    assert crops.tiling == ref_tiling == tiling
    assert crops.global_crop.shape == (112, 112, 3) and crops.local.shape == (tiling[0] * tiling[1], 112, 112, 3)
    assert np.array_equal(g, crops.global_crop) and np.array_equal(local, crops.local)
    enc = md.encode_image(img)
    assert enc.embeddings.shape == (64, md.n_embd)
    err = rel(enc.embeddings, ref.image_embeddings(img).numpy())
    print(f"{image} {tiling}: embeddings rel err {err:.2e}")
    assert err < EMBED_TOL


@pytest.mark.parametrize("image", ["1crop", "multicrop"])
def test_logits_and_greedy_answers_match_the_reference(md, ref, image):
    img = scene(*IMAGES[image][0])
    rows = ref.image_embeddings(img)
    rev = spec2025.REVISIONS_2025[REVISION]
    ids = [*rev.query.before, *md.tokenize(spec2025.template_text(rev.query, QUESTION)), *rev.query.after]
    want = ref.logits(rows, ids).numpy()
    got = md.logits(img, QUESTION)[: want.shape[0]]
    err = rel_logits(got, want)
    print(f"{image}: logits rel err {err:.2e}")
    assert err < LOGIT_TOL
    a = md.query(img, QUESTION, temperature=0, max_tokens=8)
    assert a.tokens == ref.generate(rows, ids, 8, masked=rev.masked)[: len(a.tokens)]
    assert len(a.tokens) == 8 or a.finish_reason == "stop"


@pytest.mark.parametrize("image", ["1crop", "multicrop"])
def test_detect_and_point_bins_match_the_reference(md, ref, image):
    img = scene(*IMAGES[image][0])
    rows = ref.image_embeddings(img)
    for skill in ("detect", "point"):
        got = skills2025.run(md, img, OBJECT, skill, MAX_OBJECTS)
        bins, objects, _, _ = reference_loop(ref, rows, template_ids(md, skill, OBJECT), skill, MAX_OBJECTS)
        print(f"{image} {skill}: {got.bins}")
        assert got.bins == bins and len(bins) == MAX_OBJECTS
        assert_same_objects(got.objects, objects)


# ------------------------------------------------------------------------------------------------ max_crops
def test_max_crops_defaults_to_the_models_and_is_its_limit(md, small_pair):
    big = scene(1024, 768)
    # h 712, w 968: min 13x18 windows; at 6: r = sqrt(6/234) = .160: floor(2.08), floor(2.88); at upstream's 12 it
    # would be floor(2.94) x floor(4.07) = 2x4
    assert md.multicrop.crops_of(big)[0].tiling == (2, 2)
    assert md.multicrop.crops_of(big, 2)[0].tiling == (1, 1)  # r = .092: floor(1.2), floor(1.66)
    for over in (7, 12):
        with pytest.raises(MoondreamError, match=f"max_crops {over} is over this model's limit of 6"):
            md.query(big, QUESTION, max_tokens=2, max_crops=over)
    with pytest.raises(MoondreamError, match="from 1 to 6 .this model's limit"):
        Moondream.load(*small_pair, n_threads=1, max_crops=7)
    with Moondream.load(*small_pair, n_threads=1, max_crops=3) as fewer:
        assert fewer.multicrop.max_crops == 3 and fewer.multicrop.crops_of(big)[0].tiling == (1, 2)
        with pytest.raises(MoondreamError, match="over the limit of 3 this model was loaded with.*own is 6"):
            fewer.multicrop.crops_of(big, 4)


def test_a_file_over_upstreams_twelve_is_held_to_twelve(small_pair, tmp_path):
    text, mmproj = small_pair
    mmproj = rewrite(mmproj, tmp_path / "mm.gguf", keys={spec2025.MD_MAX_CROPS: (20, GGUFValueType.UINT32, None)})
    with Moondream.load(text, mmproj, n_threads=1) as md:
        assert md.multicrop.max_crops == md.multicrop.model_max_crops == 12


def test_the_cli_names_the_models_limit(small_pair, tmp_path):
    scene(200, 200).save(tmp_path / "img.png")
    text, mmproj = small_pair
    r = subprocess.run([CLI, "query", str(tmp_path / "img.png"), "What?", "--max-crops", "8", "--text", str(text),
                        "--mmproj", str(mmproj)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "from 1 to 6" in r.stderr and "this model's limit" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------ refusals
def _u32(value):
    return (value, GGUFValueType.UINT32, None)


@pytest.mark.parametrize("part,keys,message", [
    ("mmproj", {"clip.vision.image_size": _u32(100)}, "image size 100 is not a multiple of the patch size 14"),
    ("mmproj", {"clip.vision.patch_size": _u32(0)}, "the patch size is 0"),
    ("mmproj", {"clip.vision.image_size": _u32(2800)}, r"image_size \(the crop size\) is 2800, not between 1 and 1024"),
    ("mmproj", {"clip.vision.image_size": _u32(1000), "clip.vision.patch_size": _u32(10)},
     "makes a 100x100 grid, over 64 a side"),
    ("mmproj", {spec2025.MD_OVERLAP_MARGIN: _u32(4)}, "overlap margin of 4 patches .* in a 8-patch crop, which takes "
                                                      r"a margin of 0\.\.3"),
    ("mmproj", {spec2025.MD_MAX_CROPS: _u32(0)}, "max_crops is 0, not between 1 and 64"),
    ("mmproj", {"clip.vision.image_size": _u32(224)},
     r"v.position_embd.weight has shape \(1, 64, 72\), expected \(256, 72\)"),
    ("text", {spec2025.MD_PREFIX_ROWS: _u32(100)}, "evaluates a 100-row prefix, but BOS and .* 64 image rows make 65"),
    ("text", {spec2025.MD_PREFIX_ROWS: _u32(730)}, "prefix_attention_rows is 730, not between 2 and 511"),
])
def test_inconsistent_geometry_is_refused_before_llama_cpp(small_pair, tmp_path, monkeypatch, part, keys, message):
    text, mmproj = small_pair
    if part == "text":
        text = rewrite(text, tmp_path / "text.gguf", keys=keys)
    else:
        mmproj = rewrite(mmproj, tmp_path / "mmproj.gguf", keys=keys)

    def llama_cpp_reached(*a, **k):
        raise AssertionError("llama.cpp was asked to open a file the checks should have refused")

    monkeypatch.setattr("moondream_cpp.runtime.TextModel", llama_cpp_reached)
    monkeypatch.setattr("moondream_cpp.vision.VisionContext", llama_cpp_reached)
    with pytest.raises(ModelFileError, match=message):
        gguf_check.check_pair(text, mmproj)
    with pytest.raises(ModelFileError, match=message):
        Moondream.load(text, mmproj, n_threads=1)


@pytest.mark.parametrize("edit,message", [
    (dict(crop_size=100), "the crop size 100 is not a multiple of the patch size 14"),
    (dict(overlap_margin=4), "an overlap margin of 4 patches in a 8-patch crop"),
    (dict(crop_size=1400), "the crop size is 1400, not between 1 and 1024"),
])
def test_the_converter_refuses_such_a_config(small_ck, tmp_path, edit, message):
    ck = tmp_path / "ck"
    shutil.copytree(small_ck, ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["config"]["vision"].update(edit)
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        convert(ck, tmp_path / "o", "f32", "f32", revision=REVISION)
