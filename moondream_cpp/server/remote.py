"""Remote images (--allow-remote-images), fetched so that a URL cannot make the server reach what its client cannot
(SSRF): the name is resolved once and every address it has must be global (no loopback, private, link-local such as
169.254.169.254, multicast, reserved, nor those hidden in IPv4-mapped, 6to4, Teredo or NAT64 forms); the connection
goes to that pinned address (the Host header and TLS SNI keep the name); no redirects, no proxies from the
environment (http.client reads none), one total deadline for resolve + connect + headers + body, a size limit, and
a small pool of fetch threads so slow URLs cannot take the threads other requests need. Every failure is the same
message: which targets exist, answer, or speak HTTP is nothing a client learns here (the server log has the reason)."""
from __future__ import annotations

import asyncio
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from .errors import ApiError

log = logging.getLogger(__name__)

FETCH_SLOTS = 4  # fetches at once; more are a 503 (each holds up to max_image_bytes)
_READ = 64 * 1024
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class FetchFailed(Exception):
    """Why a fetch failed, for the server log only."""


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address, also when it is an IPv4 address in IPv6 clothing."""
    if ip.version == 6:
        embedded = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if any(ip in net for net in _NAT64):
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(e is not None and not is_public(e) for e in embedded):
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local
                                 or ip.is_unspecified)


def pinned_address(host: str, port: int, resolver, allow_loopback: bool) -> str:
    """The one address to connect to: `host` resolved once; refused unless every address it has is public."""
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise FetchFailed(f"resolving {host!r}: {e}") from None
    addresses = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not (is_public(ip) or (allow_loopback and ip.is_loopback)):
            raise FetchFailed(f"{host!r} resolves to {ip}, not a public address")
        addresses.append(str(ip))
    if not addresses:
        raise FetchFailed(f"{host!r} has no address")
    return addresses[0]


def fetch_url(url: str, policy, deadline: float) -> bytes:
    """GET `url` by the rules above, done by `deadline` (time.monotonic()); FetchFailed otherwise."""
    try:
        u = urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError as e:
        raise FetchFailed(f"bad URL: {e}") from None
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.password:
        raise FetchFailed("not an http(s) URL with a host and no credentials")
    resolver = policy.resolver or socket.getaddrinfo
    ip = pinned_address(u.hostname, port, resolver, policy.allow_loopback_fetches)
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchFailed("deadline passed while resolving")
    try:
        sock = socket.create_connection((ip, port), timeout=left)
    except OSError as e:
        raise FetchFailed(f"connecting to {ip}:{port}: {e}") from None
    fired = threading.Event()

    def cut_off():  # the deadline is for the whole fetch: a peer that drips a byte at a time is cut off too
        fired.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut_off)
    timer.daemon = True
    timer.start()
    try:
        if u.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)  # SNI + cert name
        conn = (http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection)(
            u.hostname, port, timeout=max(0.01, deadline - time.monotonic()))
        conn.sock = sock  # already connected to the pinned address: http.client opens nothing itself
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn.request("GET", path, headers={"Accept": "image/*", "Accept-Encoding": "identity",
                                           "User-Agent": "moondream-cpp", "Connection": "close"})
        r = conn.getresponse()
        if r.status != 200:  # redirects included: each hop would need the checks again; none is followed
            raise FetchFailed(f"HTTP {r.status}")
        declared = r.getheader("content-length", "")
        if declared.isdigit() and int(declared) > policy.max_image_bytes:
            raise FetchFailed(f"Content-Length {declared} over the limit")
        chunks, total = [], 0
        while piece := r.read1(_READ):
            total += len(piece)
            if total > policy.max_image_bytes:
                raise FetchFailed("body over the limit")
            chunks.append(piece)
        if fired.is_set():
            raise FetchFailed("deadline passed")
        return b"".join(chunks)
    except FetchFailed:
        raise
    except Exception as e:  # noqa: BLE001 - TLS, HTTP parse, socket: all the same to the client
        raise FetchFailed("deadline passed" if fired.is_set() else f"{e.__class__.__name__}: {str(e)[:200]}") from None
    finally:
        timer.cancel()
        sock.close()


class RemoteFetcher:
    """Fetches in their own small thread pool; a fetch that cannot get a thread at once is a 503."""

    def __init__(self, policy, slots: int = FETCH_SLOTS):
        self.policy = policy
        self.free = slots
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="image-fetch")

    def failure(self) -> ApiError:
        p = self.policy
        return ApiError(400, f"could not fetch the image URL: it must be a public http(s) address that answers 200 "
                        f"with at most {p.max_image_bytes} bytes within {p.remote_timeout_s:g} s; check the URL or "
                        "send the image as a data: URI", param="image_url")

    async def fetch(self, url: str) -> bytes:
        if self.free <= 0:
            raise ApiError(503, "too many image downloads in progress; retry shortly, or send the image as a data: "
                           "URI", code="server_busy", headers={"Retry-After": "1"})
        self.free -= 1  # given back when the thread is done, not when we stop waiting for it
        deadline = time.monotonic() + self.policy.remote_timeout_s
        fut = asyncio.get_running_loop().run_in_executor(self.pool, fetch_url, url, self.policy, deadline)
        fut.add_done_callback(self._done)
        try:
            # resolving cannot be cut off from here: the client stops waiting at the deadline anyway
            return await asyncio.wait_for(asyncio.shield(fut), self.policy.remote_timeout_s + 0.5)
        except FetchFailed as e:
            log.info("image fetch failed: %s", e)
            raise self.failure() from None
        except asyncio.TimeoutError:
            log.info("image fetch failed: deadline passed")
            raise self.failure() from None

    def _done(self, fut):
        self.free += 1
        if not fut.cancelled():
            fut.exception()  # retrieved: a failure nobody waits for any more is not logged as unhandled

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
