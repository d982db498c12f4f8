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

# Decompression-bomb guard: a small file that decodes to gigabytes is refused before decoding.
MAX_PIXELS = int(os.environ.get("MOONDREAM_CPP_MAX_PIXELS", 64_000_000))


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
        return Image.open(io.BytesIO(source)), "image data"
    path = Path(source)
    if not path.exists():
        raise ImageError(f"{path}: no such image file")
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes), not an image")
    return Image.open(path), str(path)


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
            if getattr(img, "is_animated", False):
                img.seek(0)  # animated GIF/PNG/WebP: the first frame
            img.load()
            img = ImageOps.exif_transpose(img)  # what a viewer shows: camera photos stored sideways are turned upright
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
        # 16-bit and float greyscale: scale the full range to 8 bits (PIL's convert would clip it to white)
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")  # as moondream's preprocess: alpha dropped, CMYK/palette/greyscale to RGB


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """Moondream's stretch: PIL bicubic (antialiased) straight to size x size, no aspect ratio kept, uint8 HxWx3."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
