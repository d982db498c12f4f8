"""The 2025 image path after the vision tower: reconstruction against a hand-built ownership map, pooling and the
projector against torch, and the whole path against a direct computation on the stretched image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize
from PIL import Image

from moondream_cpp.crops import overlap_crops, resize_lanczos
from moondream_cpp.errors import ModelFileError, MoondreamError
from moondream_cpp.multicrop import EmbedTimings, Projector, adaptive_avg_pool, image_embeddings, reconstruct

NAMES = ("md.proj.fc1.weight", "md.proj.fc1.bias", "md.proj.fc2.weight", "md.proj.fc2.bias")


@pytest.mark.parametrize("h,w", [(65, 84), (46, 84), (27, 27), (28, 30), (65, 65), (20, 33)])
def test_pooling_matches_torch(h, w):
    x = np.random.default_rng(h * w).standard_normal((h, w, 9)).astype(np.float32)
    want = F.adaptive_avg_pool2d(torch.from_numpy(x).permute(2, 0, 1)[None], (27, 27))[0].permute(1, 2, 0).numpy()
    got = adaptive_avg_pool(x, 27)
    assert got.shape == (27, 27, 9) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pooling_bins_overlap_as_torch_does():
    # 65 -> 27: bin 0 is rows [0, 3), bin 1 rows [2, 5): row 2 counts in both (hand-worked from floor/ceil)
    x = np.zeros((65, 27, 1), np.float32)
    x[2] = 6.0
    got = adaptive_avg_pool(x, 27)[:, 0, 0]
    assert got[0] == pytest.approx(2.0) and got[1] == pytest.approx(2.0) and not got[2:].any()


def test_reconstruction_cuts_the_margins():
    g, m, th, tw = 27, 4, 2, 3
    a, b = np.mgrid[:g, :g]
    tiles = np.stack([np.stack([np.full((g, g), k), a, b], -1) for k in range(th * tw)]).astype(np.float32)
    got = reconstruct(tiles, (th, tw), m)
    assert got.shape == (19 * 2 + 8, 19 * 3 + 8, 3)
    # worked by hand: tile r keeps rows [19r + (0 if first else 4), 19r + (27 if last else 23)), so the owners change
    # at 23 and 42; a cell at Y in tile row r is that tile's local row Y - 19r
    def owner(v, n):  # with n tiles along the axis
        return min(n - 1, 0 if v < 23 else 1 if v < 42 else 2)

    for y in range(got.shape[0]):
        for x in range(got.shape[1]):
            r, c = owner(y, th), owner(x, tw)
            assert tuple(got[y, x]) == (r * tw + c, y - 19 * r, x - 19 * c), (y, x)


def test_reconstruction_of_one_tile_is_the_tile():
    tile = np.random.default_rng(1).standard_normal((1, 5, 5, 2)).astype(np.float32)
    assert np.array_equal(reconstruct(tile, (1, 1), 1), tile[0])
    column = np.arange(3 * 5 * 5, dtype=np.float32).reshape(3, 5, 5, 1)  # (3, 1), g 5, m 1: rows 0-3 | 4-6 | 7-10
    got = reconstruct(column, (3, 1), 1)[:, :, 0]
    assert got.shape == (11, 5)
    assert np.array_equal(got[0:4], column[0, 0:4, :, 0]) and np.array_equal(got[4:7], column[1, 1:4, :, 0])
    assert np.array_equal(got[7:11], column[2, 1:5, :, 0])


def test_reconstruction_refuses_a_mismatch():
    with pytest.raises(ValueError):
        reconstruct(np.zeros((5, 27, 27, 2), np.float32), (2, 3), 4)


def write_projector(path, weights: dict, qtype=Q.F32):
    w = GGUFWriter(str(path), "clip")
    for name, arr in weights.items():
        if arr.ndim == 1 or qtype == Q.F32:
            w.add_tensor(name, arr.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_weights(c_in, inner, d, seed=0):
    rng = np.random.default_rng(seed)
    return dict(zip(NAMES, [rng.standard_normal((inner, c_in)).astype(np.float32) * 0.2,
                            rng.standard_normal(inner).astype(np.float32),
                            rng.standard_normal((d, inner)).astype(np.float32) * 0.2,
                            rng.standard_normal(d).astype(np.float32)]))


def q8_0_values(w):
    """Q8_0 as ggml defines it, worked here: blocks of 32 along a row, d = max|v|/127, values round(v/d), d stored
    as f16."""
    blocks = w.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127
    q = np.round(blocks * np.where(d == 0, 0, 1 / np.where(d == 0, 1, d)))
    return (q * d.astype(np.float16).astype(np.float32)).reshape(w.shape)


def torch_projector(x, weights):
    w1, b1, w2, b2 = (torch.from_numpy(weights[n]) for n in NAMES)
    return F.linear(F.gelu(F.linear(torch.from_numpy(x), w1, b1), approximate="tanh"), w2, b2).numpy()


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.Q8_0])
def test_projector_matches_torch(tmp_path, qtype):
    weights = random_weights(64, 96, 32)
    write_projector(tmp_path / "p.gguf", weights, qtype)
    stored = dict(weights)
    if qtype == Q.F16:
        stored = {n: v if v.ndim == 1 else v.astype(np.float16).astype(np.float32) for n, v in weights.items()}
    elif qtype == Q.Q8_0:
        stored = {n: v if v.ndim == 1 else q8_0_values(v) for n, v in weights.items()}
        assert not np.allclose(stored[NAMES[0]], weights[NAMES[0]], atol=1e-6)  # the rounding shows
    x = np.random.default_rng(5).standard_normal((729, 64)).astype(np.float32)
    proj = Projector(tmp_path / "p.gguf")
    got = proj(x)
    assert got.shape == (729, 32) and got.dtype == np.float32
    assert (proj.in_features, proj.out_features) == (64, 32)
    np.testing.assert_allclose(got, torch_projector(x, stored), rtol=1e-4, atol=1e-4)


def test_projector_loads_once(tmp_path):
    path = tmp_path / "p.gguf"
    write_projector(path, random_weights(8, 16, 4))
    proj = Projector(path)
    x = np.ones((3, 8), np.float32)
    first = proj(x)
    path.unlink()  # kept in memory after the first call: the file is not read again
    assert np.array_equal(proj(x), first)


def test_projector_names_what_is_missing(tmp_path):
    weights = random_weights(8, 16, 4)
    del weights["md.proj.fc2.bias"]
    write_projector(tmp_path / "p.gguf", weights)
    with pytest.raises(ModelFileError, match="no md.proj.fc2.bias: it is not a 2025 moondream mmproj"):
        Projector(tmp_path / "p.gguf")(np.ones((1, 8), np.float32))
    with pytest.raises(ModelFileError, match="cannot read the projector"):
        Projector(tmp_path / "none.gguf").load()


def patch_means(pixels, patch=14):
    h, w = pixels.shape[0] // patch, pixels.shape[1] // patch
    return pixels.astype(np.float64).reshape(h, patch, w, patch, 3).mean(axis=(1, 3))


def fake_tower(calls):
    """A vision tower whose features are each patch's mean colour, followed by two columns the path must ignore."""
    def encode(pixels):
        calls.append(pixels)
        feats = patch_means(pixels).reshape(729, 3).astype(np.float32)
        return np.concatenate([feats, np.full((729, 2), 99.0, np.float32)], axis=1)
    return encode


def test_image_embeddings_against_the_stretched_image(tmp_path):
    write_projector(tmp_path / "p.gguf", weights := random_weights(6, 16, 8))
    img = np.random.default_rng(2).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    crops = overlap_crops(img, resize=resize_lanczos)
    calls, timings = [], EmbedTimings()
    got = image_embeddings(crops, fake_tower(calls), Projector(tmp_path / "p.gguf"), feature_length=3, margin=4,
                           grid=27, timings=timings)
    assert crops.tiling == (2, 4) and len(calls) == 9 and len(timings.encode_ms) == 9
    assert timings.projector_ms > 0 and timings.reconstruct_pool_ms > 0 and timings.total_ms >= timings.projector_ms
    # directly: the reconstructed map is the patch grid of the whole stretch (46 x 84 patches), since crops sit
    # 19 patches apart and reconstruction undoes exactly that
    pil = Image.fromarray(img)
    stretched = patch_means(np.asarray(pil.resize((1176, 644), Image.LANCZOS))).astype(np.float32)
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(stretched).permute(2, 0, 1)[None], 27)[0].permute(1, 2, 0)
    whole = patch_means(np.asarray(pil.resize((378, 378), Image.LANCZOS))).reshape(729, 3).astype(np.float32)
    x = np.concatenate([whole, pooled.reshape(729, 3).numpy()], axis=1)
    np.testing.assert_allclose(got, torch_projector(x, weights), rtol=1e-4, atol=1e-4)


def test_one_tile_is_encoded_once(tmp_path):
    write_projector(tmp_path / "p.gguf", weights := random_weights(6, 16, 8))
    img = np.random.default_rng(3).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    calls = []
    got = image_embeddings(overlap_crops(img, resize=resize_lanczos), fake_tower(calls), Projector(tmp_path / "p.gguf"),
                           3, 4, 27)
    assert len(calls) == 1
    whole = patch_means(np.asarray(Image.fromarray(img).resize((378, 378), Image.LANCZOS))).reshape(729, 3)
    x = np.concatenate([whole, whole], axis=1).astype(np.float32)  # [g || g]
    np.testing.assert_allclose(got, torch_projector(x, weights), rtol=1e-4, atol=1e-4)


def test_a_tower_of_the_wrong_width_is_refused(tmp_path):
    write_projector(tmp_path / "p.gguf", random_weights(6, 16, 8))
    crops = overlap_crops(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(MoondreamError, match="expected 729 rows of at least 6"):  # the tower gives 5 columns
        image_embeddings(crops, fake_tower([]), Projector(tmp_path / "p.gguf"), 6, 4, 27)
    with pytest.raises(ModelFileError, match="takes rows of 6, got"):  # 2 x 4 features for a projector of 6
        image_embeddings(crops, fake_tower([]), Projector(tmp_path / "p.gguf"), 4, 4, 27)
