"""Read images safely and preprocess them exactly as moondream does: RGB, PIL bicubic stretch to size
(docs/architecture.md §3)."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

# Decompression-bomb guards, checked from the header before decoding: a small file must not decode to gigabytes, nor
# to a shape whose resize needs them (resampling a 1 x 64M strip to 378 x 378 makes a 378 x 64M intermediate).
MAX_PIXELS = int(os.environ.get("MOONDREAM_CPP_MAX_PIXELS", 64_000_000))
MAX_SIDE = 32768
MAX_ASPECT = 64  # a longer side over 64 times the shorter is no picture moondream can read once stretched square
# Only these decoders ever see input: Pillow's other plugins include EPS (which runs Ghostscript where installed) and
# rarely used parsers (FITS, PSD, JPEG 2000, ...) that an upload could reach.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
ORIENTATION = 0x0112  # the EXIF tag
CONVERT_BLOCK_BYTES = 16 * 2**20  # float64 scratch per block when 16-bit or float images are scaled to 8 bits


def _open(source) -> tuple[Image.Image, str]:
    if isinstance(source, Image.Image):
        return source, "image"
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise ImageError(f"an image array must be uint8 HxW or HxWxC, got {source.dtype} {source.shape}")
        return Image.fromarray(source), "array"
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("the image data is empty (0 bytes)")
        return Image.open(io.BytesIO(source), formats=FORMATS), "image data"
    if not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"an image is a path, bytes, a PIL image or a uint8 array, not {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise ImageError(f"{path}: no such image file")
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes), not an image")
    return Image.open(path, formats=FORMATS), str(path)


def load_image(source) -> Image.Image:
    """Decode `source` (path, bytes, PIL image or uint8 array) into an upright 8-bit RGB image, or raise ImageError."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else "image"
    bomb = (f"{name} is over the {MAX_PIXELS / 1e6:.0f} megapixel limit (a decompression bomb?); shrink it, or raise "
            "MOONDREAM_CPP_MAX_PIXELS")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img, name = _open(source)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{w}x{h}: {bomb}")
            if max(w, h) > MAX_SIDE or max(w, h) > MAX_ASPECT * max(1, min(w, h)):
                raise ImageError(f"{name} is {w}x{h}: a side over {MAX_SIDE} pixels or over {MAX_ASPECT} times the "
                                 "other is refused (it cannot be read once stretched square); crop or resize it")
            if getattr(img, "is_animated", False):
                img.seek(0)  # animated GIF/PNG/WebP: the first frame
            img.load()
            if img.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies the image even when nothing turns
                img = ImageOps.exif_transpose(img)  # what a viewer shows: photos stored sideways are turned upright
            return _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(bomb) from None
    except UnidentifiedImageError:
        # Pillow's own message names a BytesIO's repr for uploads; ours names what the user sent
        raise ImageError(f"{name} is not a readable image (no image format Pillow knows, or cut short); use a "
                         "JPEG, PNG, GIF, WebP, BMP or TIFF file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name} could not be decoded ({e}); the file may be truncated or corrupt") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _wide_grey_to_8bit(img)
    # as moondream's preprocess: alpha dropped, CMYK/palette/greyscale to RGB (an RGB image is not copied again)
    return img if img.mode == "RGB" else img.convert("RGB")


def _wide_grey_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale: the full range scaled to 8 bits (PIL's convert would clip it to white), a block of
    rows at a time so the float64 scratch stays small whatever the image's size."""
    w, h = img.size
    rows = max(1, CONVERT_BLOCK_BYTES // (8 * max(1, w)))
    blocks = [(r, min(h, r + rows)) for r in range(0, h, rows)]

    def block(r0, r1):
        return np.asarray(img.crop((0, r0, w, r1)), dtype=np.float64)

    if img.mode.startswith("I;16"):
        hi = 65535.0
    else:  # 32-bit int or float: 8-bit data stored wide keeps its scale
        top = np.max([np.max(block(r0, r1)) for r0, r1 in blocks])  # NaN propagates, as in one whole-array max
        hi = 65535.0 if top > 255 else 255.0
    out = np.empty((h, w), np.uint8)
    for r0, r1 in blocks:
        out[r0:r1] = np.clip(block(r0, r1) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """Moondream's stretch: PIL bicubic (antialiased) straight to size x size, no aspect ratio kept, uint8 HxWx3."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
