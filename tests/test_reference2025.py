"""The 2025 PyTorch reference (moondream_cpp/reference/md2025*.py) against hand-worked facts of the spec: tiling,
pooling bins, tile placement, crop pixels, the prefix mask, and its own cached generation against recomputation."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from checkpoints2025 import make_checkpoint_2025, starmie_vocab_size
from PIL import Image
from safetensors import safe_open

from moondream_cpp import spec2025
from moondream_cpp.reference.md2025 import Reference2025, attention_mask
from moondream_cpp.reference.md2025_image import CropGeometry

QUESTION = [*spec2025.REVISIONS_2025["2025-04-14"].query.before, 1212, 318, 257, 3290, 30,
            *spec2025.REVISIONS_2025["2025-04-14"].query.after]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return Reference2025.load(make_checkpoint_2025(tmp_path_factory.mktemp("md2025") / "ck"))


def sample_image(w, h, seed=0):
    """Smooth gradients with a few blocks: resizing keeps structure, crops differ."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + 2 * yy) // 3) % 256], -1)
    rng = np.random.default_rng(seed)
    for _ in range(6):
        y, x = rng.integers(0, h - h // 5), rng.integers(0, w - w // 5)
        img[y: y + h // 5, x: x + w // 5] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def features_1024x768(ref):
    return ref.crop_features(sample_image(1024, 768))


# W x H -> (rows, cols), worked by hand from the rule (margins of 112 px off, window 266, at most 12)
TILINGS = [
    ((378, 378), (1, 1)),  # h = w = 266: fits one window
    ((379, 379), (3, 3)),  # mins (2,2); floor(sqrt 12) = 3 each
    ((1024, 768), (3, 4)),  # h 656, w 912: mins (3,4); (2,4) raised to (3,4)
    ((640, 480), (2, 4)), ((800, 600), (2, 4)),
    ((1920, 1080), (2, 4)),  # mins (4,7) = 28 > 12: r = sqrt(12/28); floor(2.62), floor(4.58)
    ((3000, 400), (1, 8)),  # mins (2,11) = 22 > 12: r = 0.739; floor(1.48), floor(8.12)
    ((1000, 1000), (3, 3)),  # mins (4,4) = 16 > 12: floor(4 * 0.866) = 3
    ((1000, 378), (1, 1)), ((378, 1000), (1, 1)), ((2000, 300), (1, 1)),  # either side fits: the `or`
    ((1312, 382), (2, 6)),  # h 270, w 1200: mins (2,5); (1,7) raised to (2,7) = 14 > 12, tw > th: tw = 12 // 2
    ((382, 1312), (6, 2)),  # transposed: th >= tw, th = 12 // 2
    ((10000, 380), (1, 15)),  # mins (2,38): r = sqrt(12/76) = 0.397; floor(0.79) -> at least 1, floor(15.1)
]


@pytest.mark.parametrize("size,expected", TILINGS, ids=[f"{w}x{h}" for (w, h), _ in TILINGS])
def test_tiling_matches_the_hand_table(ref, size, expected):
    w, h = size
    assert ref.tiling(h, w) == expected


def test_max_crops_override_changes_the_tiling():
    # 1024x768 with at most 4: mins (3,4) = 12 > 4, r = sqrt(4/12) = 0.577: floor(1.73), floor(2.31)
    assert CropGeometry(max_crops=4).tiling(768, 1024) == (1, 2)


def test_pooling_bins_65_to_27_overlap_as_torch_does():
    geo = CropGeometry()
    # channel k marks input row k, so output row i's non-zero channels are the rows its bin averages
    marks = torch.zeros(65, 65, 65)
    for k in range(65):
        marks[k, :, k] = 1.0
    pooled = geo.pool(marks).reshape(27, 27, 65)[:, 0]  # [output row, input row]
    bins = [tuple(torch.nonzero(pooled[i]).flatten().tolist()) for i in range(27)]
    assert bins[:3] == [(0, 1, 2), (2, 3, 4), (4, 5, 6, 7)]  # [0,3), [2,5), [4,8)
    assert bins == [tuple(range(math.floor(i * 65 / 27), math.ceil((i + 1) * 65 / 27))) for i in range(27)]
    assert torch.allclose(pooled[2, 4:8], torch.full((4,), 0.25))


def test_reconstruction_places_tiles_and_cuts_margins():
    geo, (th, tw) = CropGeometry(), (2, 3)
    g, m, win = 27, 4, 19
    feats = torch.zeros(th * tw, g, g, 3)
    for r in range(th):
        for c in range(tw):
            py, px = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
            feats[r * tw + c, ..., 0] = r * win + py  # the grid row this patch covers
            feats[r * tw + c, ..., 1] = c * win + px
            feats[r * tw + c, ..., 2] = r * tw + c
    out = geo.reconstruct(feats.reshape(th * tw, g * g, 3), (th, tw))
    assert out.shape == (th * win + 2 * m, tw * win + 2 * m, 3)
    ys, xs = torch.meshgrid(torch.arange(out.shape[0]), torch.arange(out.shape[1]), indexing="ij")
    assert torch.equal(out[..., 0], ys.float()) and torch.equal(out[..., 1], xs.float())
    # each tile keeps its inner half of the overlap: source row/col = clamp((y - m) // win)
    src = (ys - m).div(win, rounding_mode="floor").clamp(0, th - 1) * tw + \
        (xs - m).div(win, rounding_mode="floor").clamp(0, tw - 1)
    assert torch.equal(out[..., 2], src.float())


def test_crops_are_lanczos_resizes_without_keeping_aspect(ref):
    img = sample_image(1024, 768)
    glob, locals_, tiling = ref.crops(img)
    assert tiling == (3, 4) and glob.shape == (378, 378, 3) and locals_.shape == (12, 378, 378, 3)
    pil = Image.fromarray(img)
    assert np.array_equal(glob, np.asarray(pil.resize((378, 378), Image.Resampling.LANCZOS)))
    big = np.asarray(pil.resize((4 * 266 + 112, 3 * 266 + 112), Image.Resampling.LANCZOS))  # 1176 x 910
    for i in range(3):
        for j in range(4):
            assert np.array_equal(locals_[i * 4 + j], big[266 * i: 266 * i + 378, 266 * j: 266 * j + 378])


def test_crop_features_of_1024x768_are_13_distinct_crops(ref, features_1024x768):
    f = features_1024x768
    assert f.shape == (13, 729, 72) and f.dtype == torch.float32
    # decisive vision weights: every crop's features stand clearly apart from the others
    flat = f.reshape(13, -1)
    dist = torch.cdist(flat, flat) / flat.norm(dim=1).mean()
    assert dist[~torch.eye(13, dtype=torch.bool)].min() > 0.2
    emb = ref.project(f, (3, 4))
    assert emb.shape == (729, 80)
    # crop order matters: reversing the locals moves the embeddings clearly
    rev = ref.project(torch.cat([f[:1], f[1:].flip(0)]), (3, 4))
    assert (rev - emb).abs().max() > 0.5


def test_single_tile_encodes_the_global_crop_twice(ref):
    f = ref.crop_features(sample_image(378, 378))
    assert f.shape == (2, 729, 72)
    assert torch.equal(f[0], f[1])


def test_prefix_mask():
    m = attention_mask(0, 733, 730)
    assert m[0].sum() == 730 and m[729].sum() == 730  # BOS and the image rows see the whole prefix, not beyond
    assert m[730].sum() == 731 and m[732].sum() == 733  # prompt rows are causal
    assert not m[729, 730]
    cached = attention_mask(730, 3, 730)  # the same rows evaluated after a cached prefix
    assert torch.equal(cached, m[730:])
    assert torch.equal(attention_mask(0, 5, 0), torch.ones(5, 5, dtype=torch.bool).tril())


def test_prefix_attention_moves_the_logits(ref, features_1024x768):
    emb = ref.project(features_1024x768, (3, 4))
    prefix, causal = ref.logits(emb, QUESTION), ref.logits(emb, QUESTION, causal_only=True)
    assert prefix.shape == (51200,) and prefix.dtype == torch.float32
    assert (prefix - causal).abs().max() > 0.5


def test_generation_reuses_the_cache_as_recomputation_would(ref, features_1024x768):
    emb = ref.project(features_1024x768, (3, 4))
    out = ref.generate(emb, QUESTION, 4)
    assert len(out) == 4
    assert out == [int(ref.logits(emb, QUESTION + out[:k]).argmax()) for k in range(4)]
    logits, hidden = ref.logits_and_hidden(emb, QUESTION)
    assert hidden.shape == (80,)
    assert torch.allclose(ref.head(hidden), logits, atol=1e-4)
    # a masked id is never chosen: the runner-up comes first instead
    assert ref.generate(emb, QUESTION, 1, masked=[out[0]]) == [int(logits.topk(2).indices[1])]
    # an eos that would come first ends the answer at once
    assert ref.generate(emb, QUESTION, 4, eos=out[0]) == []


def test_checkpoint_layout_and_starmie_revision(tmp_path):
    ck = make_checkpoint_2025(tmp_path / "ck", "2025-06-21", dtype="bf16", vision_enc_n_layers=2)
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["architectures"] == ["HfMoondream"] and cfg["config"]["vision"]["enc_n_layers"] == 2
    assert (ck / spec2025.STARMIE_IN_CHECKPOINT).is_file() and (ck / "tokenizer.json").is_file()
    with safe_open(str(ck / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.text.wte").dtype == torch.bfloat16
    expected = {*spec2025.TEXT_TENSORS, *spec2025.VISION_TENSORS, *spec2025.PROJECTOR_TENSORS,
                *spec2025.REGION_TENSORS}
    expected |= {k.format(i=i) for k in spec2025.TEXT_BLOCK_TENSORS for i in range(2)}
    expected |= {k.format(i=i) for k in spec2025.VISION_BLOCK_TENSORS for i in range(2)}
    assert names == expected
    ref = Reference2025.load(ck, revision="2025-06-21")
    assert ref.rev.bos == 0
    out = ref.generate(sample_image(500, 400), [*spec2025.STARMIE_CAPTIONS["short"]], 6, masked=ref.rev.masked)
    assert len(out) == 6 and all(10 <= t < starmie_vocab_size() for t in out)  # ordinary stand-in tokens
    bf16 = Reference2025.load(ck, torch.bfloat16, revision="2025-06-21")
    a, b = ref.logits(sample_image(500, 400), [1, 2, 3]), bf16.logits(sample_image(500, 400), [1, 2, 3])
    assert b.dtype == torch.float32 and torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99


def test_region_head_encodings_and_decoders(ref, features_1024x768):
    w = ref.w
    # at 0 every Fourier feature is cos 0 = 1 (first half), sin 0 = 0: the encoder's first-half columns summed
    enc0 = w["model.region.coord_encoder.weight"][:, :16].sum(1) + w["model.region.coord_encoder.bias"]
    assert torch.allclose(ref.encode_coordinate(0.0)[0], enc0, atol=1e-5)
    # a quarter turn of the first frequency for width: cos 0 of that column, sin 1
    f = w["model.region.size_features"]
    x = float(0.25 / f[0, 0])
    feats = torch.cat([torch.cos(2 * math.pi * x * f[0]), torch.sin(2 * math.pi * x * f[0])])
    want = w["model.region.size_encoder.weight"] @ feats + w["model.region.size_encoder.bias"]
    assert torch.allclose(ref.encode_size(x, 0.0)[0], want, atol=1e-4)
    cache, h = ref.start(ref.project(features_1024x768, (3, 4)), QUESTION)
    assert ref.decode_coordinate(h).shape == (1024,) and ref.decode_size(h).shape == (2, 1024)
    h2 = ref.step(cache, ref.encode_coordinate(float(ref.decode_coordinate(h).argmax()) / 1024))
    assert h2.shape == (80,) and not torch.allclose(h, h2)
