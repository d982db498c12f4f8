"""Images built to hurt: shapes whose resize needs gigabytes, wide-range pixels converted in bounded memory, and
formats outside the six we read (Pillow's EPS plugin runs Ghostscript; other rare parsers are attack surface).
Memory is measured in a fresh process: its peak RSS while loading and preprocessing, over what it held before."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import CLI

PEAK_CODE = """
import resource, sys
from moondream_cpp.errors import ImageError
from moondream_cpp.image import load_image, preprocess
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    pixels = preprocess(load_image(data), 378)
    out = "ok"
except ImageError as e:
    out = "error: " + str(e)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
print(out)
"""


def peak_growth_mb(path) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-c", PEAK_CODE, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    grown, out = r.stdout.split("\n", 1)
    return int(grown), out.strip()


@pytest.mark.parametrize("size", [(1, 16_000_000), (16_000_000, 1)])  # the old resize: +674 MB
def test_a_long_strip_is_refused_before_its_resize_needs_gigabytes(tmp_path, size):
    p = tmp_path / "strip.png"
    Image.new("L", size).save(p)
    assert p.stat().st_size < 100_000
    grown, out = peak_growth_mb(p)
    assert out.startswith("error:") and "crop or resize it" in out, out
    assert grown < 200, f"peak RSS grew by {grown} MB"
    r = subprocess.run([CLI, "query", str(p), "What?"], capture_output=True, text=True)
    assert r.returncode == 4 and "Traceback" not in r.stderr and "16000000" in r.stderr


def test_sixteen_bit_images_convert_in_bounded_memory_to_the_same_pixels(tmp_path):
    h, w = 3000, 3000
    y, x = np.mgrid[0:h, 0:w]
    a = ((x * 21 + y * 13) % 65536).astype(np.uint16)
    p = tmp_path / "wide.png"
    Image.fromarray(a).save(p)
    grown, out = peak_growth_mb(p)
    # the decoded 16-bit image alone is 18 MB; whole-image float64 arithmetic needed ~300 MB more
    assert out.startswith("ok") and grown < 120, (grown, out)
    from moondream_cpp.image import load_image

    want = np.clip(a.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    got = np.asarray(load_image(p))
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, -1))


@pytest.mark.parametrize("mode,values,hi", [("F", [0.0, 17.5, 255.0], 255.0), ("F", [0.0, 300.0, 1e9], 65535.0),
                                            ("I", [0, 255, 254], 255.0), ("I", [0, 40000, 65535], 65535.0)])
def test_float_and_int32_images_keep_their_scale(tmp_path, mode, values, hi):
    from moondream_cpp import image

    a = np.tile(np.array(values, np.float32 if mode == "F" else np.int32), (60, 20))  # 60 x 60
    p = tmp_path / "wide.tif"
    Image.fromarray(a, mode).save(p)
    old_block = image.CONVERT_BLOCK_BYTES
    image.CONVERT_BLOCK_BYTES = 8 * 3 * 7  # 7 rows a block: blocks must not change the scale or the pixels
    try:
        got = np.asarray(image.load_image(p))[..., 0]
    finally:
        image.CONVERT_BLOCK_BYTES = old_block
    np.testing.assert_array_equal(got, np.clip(a.astype(np.float64) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"


@pytest.mark.parametrize("fmt", ["EPS", "PPM", "TGA", "PCX", "ICO", "SGI"])
def test_only_the_six_formats_are_decoded(tmp_path, fmt):
    from moondream_cpp.errors import ImageError
    from moondream_cpp.image import load_image

    p = tmp_path / f"x.{fmt.lower()}"
    if fmt == "EPS":
        p.write_bytes(EPS)
    else:
        Image.new("RGB", (16, 16), (200, 10, 10)).save(p, fmt)
        assert Image.open(p).format == fmt  # Pillow itself would read it
    for source in (p, p.read_bytes()):
        with pytest.raises(ImageError, match="not a readable image.*JPEG, PNG, GIF, WebP, BMP or TIFF"):
            load_image(source)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_the_six_formats_still_load(tmp_path, fmt):
    from moondream_cpp.image import load_image

    p = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(p, fmt)
    assert load_image(p).size == (16, 16) and load_image(p.read_bytes()).size == (16, 16)


def test_a_photo_is_decoded_once_not_copied_for_orientation_or_mode(tmp_path):
    h = w = 4000
    y, x = np.mgrid[0:h, 0:w]
    p = tmp_path / "big.png"
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(p)
    grown, out = peak_growth_mb(p)
    assert out == "ok" and grown < 80, f"a 48 MB image grew the peak by {grown} MB (two more copies made it 105)"


def test_exif_orientation_still_turns_the_photo_upright(tmp_path):
    from moondream_cpp.image import load_image

    a = np.arange(20 * 40 * 3, dtype=np.uint32).reshape(20, 40, 3).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown rotated 90 degrees clockwise
    p = tmp_path / "turned.png"
    Image.fromarray(a).save(p, exif=exif)
    np.testing.assert_array_equal(np.asarray(load_image(p)), np.rot90(a, -1))
    q = tmp_path / "plain.png"
    Image.fromarray(a).save(q)
    np.testing.assert_array_equal(np.asarray(load_image(q)), a)
