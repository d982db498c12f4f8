"""Image references in requests -> bytes -> the model's preprocessed pixels, safely: data: URIs (base64), http(s)
only when allowed (remote.py), local paths only under a media root. Every refusal is an ApiError with a 4xx status.
The functions here block (base64, file reads, decoding): the server runs them off its event loop, and the long ones
work in slices so that no single call holds the interpreter lock for long."""
from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from PIL import Image

from ..errors import ImageError
from ..image import FORMATS, load_image
from .errors import ApiError

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,", re.S)
_BASE64_HEAD = re.compile(r"[A-Za-z0-9+/=\s]{16,}")
_SLICE = 256 * 1024  # characters of base64 per step (a few ms each)


@dataclass
class ImagePolicy:
    allow_remote: bool = False
    media_root: Path | None = None
    max_image_bytes: int = 20 * 2**20
    remote_timeout_s: float = 10.0  # the whole fetch: resolve, connect, headers and body
    # tests only, never set by the CLI: fetch from loopback (an image server in the test) / resolve names by a stub
    allow_loopback_fetches: bool = False
    resolver: Callable | None = None


def kind_of(ref: str) -> str:
    """"data", "remote" or "local"; a 400 for a scheme that is none of them."""
    if not isinstance(ref, str) or not ref.strip():
        raise ApiError(400, "image_url must be a non-empty string (a data: URI, or a URL or path where allowed)",
                       param="image_url")
    ref = ref.strip()
    if _DATA_URI.match(ref):
        return "data"
    if "://" not in ref and not ref.startswith(("/", ".", "~")) and _BASE64_HEAD.fullmatch(ref[:64]):
        return "data"  # bare base64, as the moondream client sends
    scheme = urlsplit(ref[:2048]).scheme.lower()
    if scheme in ("http", "https"):
        return "remote"
    if scheme in ("file", ""):
        return "local"
    raise ApiError(400, f"image URL scheme {scheme[:20]!r} is not allowed; send a data: URI", param="image_url")


def read_inline(ref: str, policy: ImagePolicy) -> bytes:
    """The bytes of a data: URI or bare base64."""
    ref = ref.strip()
    m = _DATA_URI.match(ref)
    if m and not m.group("b64"):
        raise ApiError(400, "data: URIs must be base64 encoded (data:image/png;base64,...)", param="image_url")
    raw = _decode_base64(ref, m.end() if m else 0)
    return _bounded(raw, policy)


def _decode_base64(s: str, start: int) -> bytes:
    """s[start:] as base64 (whitespace allowed), a slice at a time: one call over 30 MB would hold the interpreter
    lock for a third of a second, freezing every other request."""
    out, carry = [], ""
    for i in range(start, len(s), _SLICE):
        piece = carry + "".join(s[i:i + _SLICE].split())
        cut = len(piece) - len(piece) % 4
        try:
            out.append(base64.b64decode(piece[:cut], validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(400, "the image is not valid base64", param="image_url") from None
        carry = piece[cut:]
    if carry:
        raise ApiError(400, "the image is not valid base64", param="image_url")
    raw = b"".join(out)
    if not raw:
        raise ApiError(400, "the image is empty", param="image_url")
    return raw


def _bounded(raw: bytes, policy: ImagePolicy) -> bytes:
    if len(raw) > policy.max_image_bytes:
        raise ApiError(413, f"the image is {len(raw)} bytes, over the {policy.max_image_bytes}-byte limit",
                       param="image_url")
    return raw


def read_local(ref: str, policy: ImagePolicy) -> bytes:
    """A file under the media root, read race-free: the path is resolved and checked, then opened without following
    a symlink that appeared since, and the opened file itself must be a regular file under the root; at most the
    size limit is read."""
    if policy.media_root is None:
        raise ApiError(400, "local image paths are disabled on this server (start it with --media-root DIR); send "
                       "the image as a data: URI", param="image_url")
    ref = ref.strip()
    path = unquote(urlsplit(ref).path) if ref.lower().startswith("file:") else ref
    root = policy.media_root.resolve()
    p = (root / path).resolve()  # an absolute `path` replaces root here; "~" means nothing on a server
    # the client's own path is not echoed: its words are enough, and a message then never names a server path
    outside = ApiError(403, "image_url names a file outside the media root", param="image_url")
    missing = ApiError(404, "image_url names no image file under the media root", param="image_url")
    if not _under(p, root):
        raise outside
    try:  # O_NONBLOCK: a FIFO put there opens at once (and is refused below) instead of hanging this thread
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise missing from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise missing
        real = f"/proc/self/fd/{fd}"
        if os.path.exists(real) and not _under(Path(os.readlink(real)), root):
            raise outside  # a directory on the way was swapped for a symlink after the check
        if st.st_size > policy.max_image_bytes:
            raise ApiError(413, f"the image is {st.st_size} bytes, over the {policy.max_image_bytes}-byte limit",
                           param="image_url")
        chunks, total = [], 0
        while total <= policy.max_image_bytes and (piece := os.read(fd, min(1 << 20, policy.max_image_bytes + 1))):
            chunks.append(piece)
            total += len(piece)
        return _bounded(b"".join(chunks), policy)  # a file that grew while read is still cut at the limit
    finally:
        os.close(fd)


def _under(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def pixel_count(raw: bytes) -> int:
    """Width x height from the image's header (nothing decoded); a huge number when the header does not read (the
    decoder then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw), formats=FORMATS) as img:
                return img.size[0] * img.size[1]
    except Exception:  # noqa: BLE001 - any unreadable header: decode() reports it
        return 1 << 62


def decode(raw: bytes, prepare: Callable[[Image.Image], object]):
    """The model's input: the image decoded (allow-listed formats and sizes, image.load_image) and made into what the
    model reads by `prepare` (pixels.prepare: stretched pixels or crops); the full-size decoded image is dropped
    before this returns."""
    try:
        return prepare(load_image(raw))
    except ImageError as e:
        raise ApiError(400, str(e), param="image_url") from None
