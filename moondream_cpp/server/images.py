"""Image references in requests -> decoded images, safely: data: URIs (base64), http(s) only when allowed (with time
and size limits), local paths only under a media root. Every refusal is an ApiError with a 4xx status."""
from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import ImageError
from ..image import load_image
from .errors import ApiError

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)$", re.S)


@dataclass
class ImagePolicy:
    allow_remote: bool = False
    media_root: Path | None = None
    max_image_bytes: int = 20 * 2**20
    remote_timeout_s: float = 10.0


def _decode_base64(s: str) -> bytes:
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", s), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "the image is not valid base64", param="image_url") from None
    if not raw:
        raise ApiError(400, "the image is empty", param="image_url")
    return raw


def fetch(ref: str, policy: ImagePolicy) -> bytes:
    """The bytes an image reference points at (not yet decoded)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ApiError(400, "image_url must be a non-empty string (a data: URI, or a URL or path where allowed)",
                       param="image_url")
    ref = ref.strip()
    m = _DATA_URI.match(ref)
    if m:
        if not m.group("b64"):
            raise ApiError(400, "data: URIs must be base64 encoded (data:image/png;base64,...)", param="image_url")
        raw = _decode_base64(m.group("data"))
    elif "://" not in ref and not ref.startswith(("/", ".", "~")) and re.fullmatch(r"[A-Za-z0-9+/=\s]{16,}", ref):
        raw = _decode_base64(ref)  # bare base64, as the moondream client sends
    else:
        scheme = urlparse(ref).scheme.lower()
        if scheme in ("http", "https"):
            raw = _remote(ref, policy)
        elif scheme in ("file", ""):
            raw = _local(unquote(urlparse(ref).path) if scheme == "file" else ref, policy)
        else:
            raise ApiError(400, f"image URL scheme {scheme!r} is not allowed; send a data: URI", param="image_url")
    if len(raw) > policy.max_image_bytes:
        raise ApiError(413, f"the image is {len(raw)} bytes, over the {policy.max_image_bytes}-byte limit",
                       param="image_url")
    return raw


def _remote(url: str, policy: ImagePolicy) -> bytes:
    if not policy.allow_remote:
        raise ApiError(400, "remote image URLs are disabled on this server (start it with --allow-remote-images); "
                       "send the image as a data: URI", param="image_url")
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=policy.remote_timeout_s) as r:
            raw = r.read(policy.max_image_bytes + 1)
    except Exception as e:  # network, HTTP status, timeout
        raise ApiError(400, f"could not fetch the image URL ({_fetch_failure(e, policy)}); check the URL or send the "
                       "image as a data: URI", param="image_url") from None
    return raw


def _fetch_failure(e: Exception, policy: ImagePolicy) -> str:
    """What went wrong, in words: urllib's own str() is a repr such as '<urlopen error [Errno 111] ...>'."""
    import socket
    import urllib.error

    if isinstance(e, urllib.error.HTTPError):
        return f"the server answered HTTP {e.code} {e.reason}"
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {policy.remote_timeout_s:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or reason.__class__.__name__


def _local(path: str, policy: ImagePolicy) -> bytes:
    if policy.media_root is None:
        raise ApiError(400, "local image paths are disabled on this server (start it with --media-root DIR); send "
                       "the image as a data: URI", param="image_url")
    root = policy.media_root.resolve()
    p = (root / Path(path).expanduser()).resolve() if not os.path.isabs(path) else Path(path).resolve()
    if root != p and root not in p.parents:
        raise ApiError(403, f"{path} is outside the media root", param="image_url")
    if not p.is_file():
        raise ApiError(404, f"{path}: no such image under the media root", param="image_url")
    return p.read_bytes()


def load(ref: str, policy: ImagePolicy):
    """Fetch and decode: a PIL RGB image, or ApiError (a non-image or a decompression bomb is a 400)."""
    raw = fetch(ref, policy)
    try:
        return load_image(raw)
    except ImageError as e:
        raise ApiError(400, str(e), param="image_url") from None
