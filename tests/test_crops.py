"""The 2025 multi-crop preprocessing: tiling against a table worked out by hand from upstream's rule, crop windows
checked through pixels that carry their own coordinates, the global view against PIL directly."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from moondream_cpp.crops import overlap_crops, resize_lanczos, resize_vips_like, select_tiling
from moondream_cpp.errors import MoondreamError

# (height, width) -> tiling; the margins (2 x 56 px) come off first, windows are 266 px. Worked by hand:
TILINGS = {
    (378, 378): (1, 1),  # h = 266: not more than one window
    (379, 379): (3, 3),  # h = w = 267: min 2x2, floor(sqrt(12)) = 3 each
    (768, 1024): (3, 4),  # h 656, w 912: min 3x4 = 12; sqrt(12*656/912) = 2.9 -> raised to 3; sqrt(16.7) -> 4
    (480, 640): (2, 4),  # h 368, w 528: min 2x2; sqrt(8.4) -> 2, sqrt(17.2) -> 4
    (600, 800): (2, 4),  # h 488, w 688: min 2x3; sqrt(8.5) -> 2, sqrt(16.9) -> 4
    (1080, 1920): (2, 4),  # step 3: min 4x7 = 28 > 12; r = sqrt(12/28) = .655: floor(2.62), floor(4.58)
    (400, 3000): (1, 8),  # step 3: min 2x11 = 22; r = .739: floor(1.48), floor(8.12)
    (379, 2000): (1, 6),  # step 3: min 2x8 = 16; r = .866: floor(1.73), floor(6.93)
    (400, 8000): (1, 13),  # step 3: min 2x30 = 60; r = .447: floor(.89) = 0 -> 1, floor(13.4): 13 > 12, as upstream
    (412, 1412): (2, 6),  # step 5: h 300, w 1300: min 2x5; sqrt(2.8) -> 1 -> 2, sqrt(52) -> 7; 14 > 12, tw = 12//2
    (1412, 412): (6, 2),  # step 5, other branch (tw not > th): th = 12//2
    (378, 2000): (1, 1),  # the `or`: one side at the boundary is enough
    (2000, 378): (1, 1),
    (379, 378): (1, 1),
    (100, 50): (1, 1),  # negative after the margins
    (910, 1176): (3, 4),  # h 798, w 1064: min 3x4; sqrt(9) = 3, sqrt(16) = 4
}


@pytest.mark.parametrize("size,tiling", TILINGS.items(), ids=[f"{h}x{w}" for h, w in TILINGS])
def test_tiling_table(size, tiling):
    assert select_tiling(*size) == tiling


@pytest.mark.parametrize("size,max_crops,tiling", [
    ((768, 1024), 6, (2, 2)),  # min 3x4 = 12 > 6: r = sqrt(.5): floor(2.12), floor(2.83)
    ((379, 379), 4, (2, 2)),  # min 2x2 = 4 fits; floor(sqrt(4)) = 2
    ((379, 379), 1, (1, 1)),  # min 4 > 1: r = .5
    ((1080, 1920), 4, (1, 2)),  # min 28 > 4: r = .378: floor(1.51), floor(2.65)
])
def test_max_crops_lowers_the_count(size, max_crops, tiling):
    assert select_tiling(*size, max_crops=max_crops) == tiling
    th, tw = select_tiling(*size)
    assert tiling[0] * tiling[1] < th * tw


@pytest.mark.parametrize("bad", [0, 13, -1, 2.5, True, "4", None])
def test_max_crops_is_checked(bad):
    with pytest.raises(MoondreamError, match="max_crops must be a whole number from 1 to 12"):
        select_tiling(800, 800, max_crops=bad)
    with pytest.raises(MoondreamError):
        overlap_crops(np.zeros((10, 10, 3), np.uint8), max_crops=bad)


def test_max_crops_accepts_numpy_ints():
    assert select_tiling(768, 1024, max_crops=np.int64(6)) == (2, 2)


def coordinate_image(h, w):
    """Each pixel says where it is: R = y mod 256, G = x mod 256, B = 8*(y div 256) + x div 256."""
    y, x = np.mgrid[:h, :w]
    return np.stack([y % 256, x % 256, 8 * (y // 256) + x // 256], axis=-1).astype(np.uint8)


def decode(pixels):
    p = pixels.astype(np.int64)
    return p[..., 2] // 8 * 256 + p[..., 0], p[..., 2] % 8 * 256 + p[..., 1]


def test_windows_sit_at_multiples_of_266():
    # 910 x 1176 is exactly the stretch of tiling (3, 4), so the local crops are the image's own pixels
    img = coordinate_image(910, 1176)
    crops = overlap_crops(img)
    assert crops.tiling == (3, 4) and crops.local.shape == (12, 378, 378, 3) and crops.local.dtype == np.uint8
    rows, cols = np.mgrid[:378, :378]
    for i in range(3):
        for j in range(4):
            y, x = decode(crops.local[i * 4 + j])  # row-major: crop (i, j) at index i*4 + j
            assert (y == i * 266 + rows).all() and (x == j * 266 + cols).all(), (i, j)
    # the last row and column of windows end exactly at the image's edge: 2*266 + 378 = 910, 3*266 + 378 = 1176
    assert decode(crops.local[-1][-1, -1]) == (909, 1175)


def test_a_short_resize_leaves_zeros():
    def short(image, height, width):  # a resizer that comes out 10 rows and 20 columns short
        return np.full((height - 10, width - 20, 3), 200, np.uint8) if height > 378 else np.zeros((378, 378, 3))

    crops = overlap_crops(np.zeros((600, 800, 3), np.uint8), resize=short)
    assert crops.tiling == (2, 4)  # stretch 644 x 1176: last windows start at 266 and 798
    last_row, last_col = crops.local[4], crops.local[3]
    assert (last_row[:-10] == 200).all() and (last_row[-10:] == 0).all()
    assert (last_col[:, :-20] == 200).all() and (last_col[:, -20:] == 0).all()
    assert (crops.local[0] == 200).all()


def test_global_crop_and_locals_are_lanczos_stretches_of_the_original():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    crops = overlap_crops(img, resize=resize_lanczos)
    pil = Image.fromarray(img)
    want_global = np.asarray(pil.resize((378, 378), Image.LANCZOS))
    assert np.array_equal(crops.global_crop, want_global)
    stretched = np.asarray(pil.resize((4 * 266 + 112, 2 * 266 + 112), Image.LANCZOS))  # (width, height)
    assert np.array_equal(crops.local[6], stretched[266:644, 532:910])  # crop (1, 2)
    # a PIL image in gives the same crops as its pixels
    again = overlap_crops(pil, resize=resize_lanczos)
    assert np.array_equal(again.global_crop, crops.global_crop) and np.array_equal(again.local, crops.local)


@pytest.mark.parametrize("h,w", [(50, 90), (378, 378), (378, 1500)])
def test_one_tile_is_the_global_view(h, w):
    img = coordinate_image(h, w)
    crops = overlap_crops(img, resize=resize_lanczos)
    assert crops.tiling == (1, 1) and crops.local.shape == (1, 378, 378, 3)
    want = np.asarray(Image.fromarray(img).resize((378, 378), Image.LANCZOS))
    assert np.array_equal(crops.global_crop, want) and np.array_equal(crops.local[0], want)


def test_aspect_is_not_kept():
    ramp = np.broadcast_to((np.arange(3000) * 255 // 2999).astype(np.uint8)[None, :, None], (400, 3000, 3))
    crops = overlap_crops(np.ascontiguousarray(ramp))
    assert crops.tiling == (1, 8) and crops.global_crop.shape == (378, 378, 3)
    # the whole width squeezed into 378 columns: column c shows the ramp at x = (c + .5) * 3000 / 378
    want = (np.arange(378) + 0.5) * 3000 / 378 * 255 / 2999
    assert np.abs(crops.global_crop[200, :, 0].astype(float) - want).max() < 1.5


@pytest.mark.parametrize("bad", [np.zeros((5, 5), np.uint8), np.zeros((5, 5, 4), np.uint8),
                                 np.zeros((5, 5, 3), np.float32), Image.new("L", (5, 5))])
def test_only_rgb_goes_in(bad):
    with pytest.raises(ValueError):
        overlap_crops(bad)


def test_vips_like_samples_where_libvips_does():
    # bicubic reproduces a linear ramp exactly, so the ramp's values show where each output pixel was sampled:
    # libvips' upsizing affine reads input x at X/s - .5 (PIL's own centres would be (X + .5)/s - .5), and shifts
    # an axis it does not scale by half a pixel too
    ramp = np.broadcast_to((10 + 2 * np.arange(100))[None, :, None], (60, 100, 3)).astype(np.uint8)
    got = resize_vips_like(Image.fromarray(np.ascontiguousarray(ramp)), 60, 250)[30, :, 0].astype(float)
    x = np.arange(250)
    inner = slice(8, 240)
    assert np.abs(got[inner] - (10 + 2 * (x / 2.5 - 0.5))[inner]).max() <= 0.5
    rows = np.ascontiguousarray(np.transpose(ramp, (1, 0, 2))[:60])  # 60 x 60, value grows down the rows
    got = resize_vips_like(Image.fromarray(rows), 60, 150)[:, 75, 0].astype(float)
    y = np.arange(60)
    assert np.abs(got[3:-3] - (10 + 2 * (y - 0.5))[3:-3]).max() <= 0.5


def test_vips_like_keeps_a_size_it_already_has():
    img = coordinate_image(378, 378)
    assert np.array_equal(resize_vips_like(Image.fromarray(img), 378, 378), img)


def smooth_image(h, w):
    y, x = np.mgrid[:h, :w] / 17.0
    return np.stack([128 + 100 * np.sin(x + k) * np.cos(0.7 * y - k) for k in range(3)], -1).astype(np.uint8)


@pytest.mark.parametrize("size,to", [((512, 512), (378, 378)), ((300, 451), (378, 378)), ((400, 600), (644, 1176)),
                                     ((872, 1000), (644, 1176)), ((96, 128), (378, 378))])
def test_vips_like_matches_pyvips(size, to):
    pyvips = pytest.importorskip("pyvips")  # not a dependency: experiments/resize-pil-vs-vips installs it
    img = smooth_image(*size)
    want = pyvips.Image.new_from_array(img).resize(to[1] / size[1], vscale=to[0] / size[0]).numpy()
    diff = np.abs(resize_vips_like(Image.fromarray(img), *to).astype(int) - want)
    assert diff.max() <= 3 and diff.mean() < 0.3


def test_the_default_resizer_is_libvips_arithmetic():
    """Upstream resized with libvips (required up to 2025-04-14); the default is its arithmetic done in PIL."""
    img = coordinate_image(200, 300)  # enlarged to 378², where PIL Lanczos and libvips differ
    assert np.array_equal(overlap_crops(img).global_crop, resize_vips_like(Image.fromarray(img), 378, 378))
    assert not np.array_equal(overlap_crops(img).global_crop, resize_lanczos(Image.fromarray(img), 378, 378))
