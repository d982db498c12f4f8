"""Who may talk to the server, checked before any route runs (an ASGI middleware, in this order):

1. Host: only names this server answers to (421). A web page that rebinds its own DNS name to 127.0.0.1 (DNS
   rebinding) sends its own name here, so it is refused; browsers cannot forge this header.
2. Origin: a browser names the page that sent a request; another site's page is refused (403) unless allowed with
   --allowed-origin (then CORS headers let that page read answers).
3. API key, when set, on every route but the web page, its static files and /health (401).
4. JSON routes (every POST) need Content-Type: application/json (415): a page may send a text/plain POST to any
   address without asking first (a CORS "simple request"); application/json makes the browser ask (preflight), and
   the answer to that names no foreign origin.
5. A declared body over the limit is a 413 before it is read (a body without Content-Length is bounded while read).
See docs/security.md for the threat model."""
from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from .errors import ApiError

_ECHO = 80  # characters of a client's header echoed back in a message
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """`host` (a bind address or a name) reaches this machine only: localhost, 127.0.0.0/8, ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split(authority: str) -> tuple[str, int | None] | None:
    """(host, port) of a Host header or an origin's authority, lowercased; None when it does not parse."""
    try:
        u = urlsplit("//" + authority)
        return (u.hostname or "").rstrip("."), u.port
    except ValueError:
        return None


class Guard:
    def __init__(self, app, *, bind_host: str, allowed_hosts=(), allowed_origins=(), api_key: str | None = None,
                 max_body_bytes: int = 32 * 2**20):
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.any_host = "*" in allowed_hosts
        bind = bind_host.strip("[]").lower()
        self.host_names = {"localhost", *(h.lower().rstrip(".") for h in allowed_hosts)}
        self.host_ips: set = set()
        self.any_ip = False
        try:
            ip = ipaddress.ip_address(bind)
            self.any_ip = ip.is_unspecified  # 0.0.0.0 or ::: whichever of the machine's addresses was used
            self.host_ips.add(ip)
        except ValueError:
            self.host_names.add(bind.rstrip("."))
        self.any_origin = "*" in allowed_origins
        self.origins = {o.lower().rstrip("/") for o in allowed_origins if o != "*"}
        # CORS headers only for the origins the operator allowed; a same-origin page needs none
        self.app = CORSMiddleware(app, allow_origins=["*"] if self.any_origin else sorted(self.origins),
                                  allow_methods=["GET", "POST"], max_age=600,
                                  allow_headers=["Authorization", "Content-Type", "X-Moondream-Auth"]) \
            if (self.any_origin or self.origins) else app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        error = self.refusal(scope, headers)
        if error is None:
            return await self.app(scope, receive, send)
        if error.status == 413 and int(headers["content-length"]) <= 8 * self.max_body_bytes:
            # a client still sending when we answer gets a broken pipe, not our 413: read (and drop) a body up to
            # 8x the limit first; a larger one is cut off at once
            while (await receive()).get("more_body"):
                pass
        await JSONResponse(error.body(), status_code=error.status, headers=error.headers)(scope, receive, send)

    def refusal(self, scope, headers: Headers) -> ApiError | None:
        host = headers.get("host")
        if host is not None and not self.host_allowed(host):
            return ApiError(421, f"this server does not answer to the Host {host[:_ECHO]!r} (a guard against DNS "
                            "rebinding); use http://127.0.0.1 or http://localhost, or start the server with "
                            "--allowed-host NAME", code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return ApiError(403, f"requests from pages of {origin[:_ECHO]!r} are refused; start the server with "
                            "--allowed-origin ORIGIN to let that page use it", code="origin_not_allowed")
        if scope["method"] == "OPTIONS" and origin is not None:
            return None  # a CORS preflight of an allowed origin: answered by CORSMiddleware, never with a key
        path = scope["path"]
        if self.api_key and not (path in ("/", "/health") or path.startswith("/static/")):
            got = headers.get("authorization", "")
            token = got[7:] if got.lower().startswith("bearer ") else headers.get("x-moondream-auth", "")
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                return ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                code="invalid_api_key")
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return ApiError(415, f"send the body as JSON with Content-Type: application/json (got "
                                f"{kind[:_ECHO] or 'none'!r})", code="unsupported_media_type")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return ApiError(413, f"the request body is {length} bytes, over the {self.max_body_bytes}-byte limit",
                            code="body_too_large")
        return None

    def host_allowed(self, header: str) -> bool:
        if self.any_host:
            return True
        parsed = _split(header)
        if parsed is None:
            return False
        name = parsed[0]
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return name in self.host_names
        # an address cannot be rebound: a page at http://<ip>/ is that machine's own page
        return ip.is_loopback or self.any_ip or ip in self.host_ips

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.lower().rstrip("/")
        if self.any_origin or origin in self.origins:
            return True
        scheme, sep, authority = origin.partition("://")
        if not sep or scheme not in _DEFAULT_PORTS or host is None:
            return False  # "null" (a sandboxed frame, a file: page), an extension, ...
        mine, theirs = _split(host.lower()), _split(authority)
        if mine is None or theirs is None:
            return False
        default = _DEFAULT_PORTS[scheme]
        return (mine[0], mine[1] or default) == (theirs[0], theirs[1] or default)
