"""Remote image URLs (--allow-remote-images) under attack (issue 27): the SSRF filter with a stub resolver that is
never connected to, the server refusing loopback / private / metadata targets, redirects, non-HTTP banners, error
words that differ per target, proxies from the environment, a server that drips a byte a second, and slow URLs that
would take every thread. The happy path is fetched from a loopback image server, which only a test may allow
(ImagePolicy.allow_loopback_fetches, not a CLI option)."""
import ipaddress
import socket
import threading
import time

import pytest

from test_hostile_server import query_image
from test_server import EX, data_uri, free_port, inprocess_server


STUB_ADDRESSES = {  # a name an attacker controls can resolve to any of these; none may be connected to
    "loopback.test": ["127.0.0.1"], "loopback-alt.test": ["127.1.2.3"], "zero.test": ["0.0.0.0"],
    "ten.test": ["10.1.2.3"], "172.test": ["172.16.5.4"], "192.test": ["192.168.1.1"], "cgnat.test": ["100.64.0.1"],
    "metadata.test": ["169.254.169.254"], "multicast.test": ["224.0.0.1"], "broadcast.test": ["255.255.255.255"],
    "reserved.test": ["240.0.0.1"], "doc.test": ["192.0.2.1"], "v6-loopback.test": ["::1"],
    "v6-link.test": ["fe80::1"], "v6-ula.test": ["fc00::1"], "v6-multicast.test": ["ff02::1"],
    "mapped.test": ["::ffff:127.0.0.1"], "mapped-metadata.test": ["::ffff:169.254.169.254"],
    "nat64-metadata.test": ["64:ff9b::a9fe:a9fe"], "6to4-loopback.test": ["2002:7f00:1::1"],
    "site-local.test": ["fec0::1"], "mixed.test": ["93.184.216.34", "10.0.0.1"],
}


def stub_resolver(host, port, type=0, **_):
    if host not in STUB_ADDRESSES:
        raise socket.gaierror(socket.EAI_NONAME, "unknown name")
    return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
             (a, port, 0, 0) if ":" in a else (a, port)) for a in STUB_ADDRESSES[host]]


def test_only_public_addresses_are_fetched(monkeypatch):
    """The filter, with a stub resolver: every non-public address (also in IPv4-mapped, NAT64 and 6to4 dress, and
    a name with one private address among public ones) is refused before any connection is made."""
    from moondream_cpp.server import ImagePolicy, remote

    connects = []
    monkeypatch.setattr(remote.socket, "create_connection", lambda *a, **k: connects.append(a) or 1 / 0)
    policy = ImagePolicy(allow_remote=True, resolver=stub_resolver)
    for name in STUB_ADDRESSES:
        for url in (f"http://{name}/a.png", f"https://{name}:8443/a.png"):
            with pytest.raises(remote.FetchFailed):
                remote.fetch_url(url, policy, time.monotonic() + 5)
    for url in ("http://unknown.test/a.png", "ftp://93.184.216.34/a.png", "http://user:pw@mixed.test/",
                "http:///a.png", "http://[::1/a.png"):
        with pytest.raises(remote.FetchFailed):
            remote.fetch_url(url, policy, time.monotonic() + 5)
    assert connects == []
    for public in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2001:4860:4860::8888"):
        assert remote.is_public(ipaddress.ip_address(public)), public


class Recorder(threading.Thread):
    """A loopback TCP server that records each connection's first bytes and answers with `reply(first_bytes)`,
    then (`drip`) one byte a second."""

    def __init__(self, reply=b"", drip=False):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.reply, self.drip, self.seen, self.stop = reply, drip, [], threading.Event()
        self.start()

    def run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        with conn:
            conn.settimeout(5)
            try:
                first = conn.recv(65536)
                self.seen.append(first)
                conn.sendall(self.reply(first) if callable(self.reply) else self.reply)
                while self.drip and not self.stop.is_set():
                    conn.sendall(b"\0")
                    time.sleep(1)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()


def http_reply(status="200 OK", body=b"", headers=()):
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n" + "".join(
        f"{h}\r\n" for h in headers)
    return head.encode() + b"\r\n" + body


def test_loopback_private_and_metadata_urls_are_refused_by_the_server():
    """Through the server (remote images on, default policy): a real loopback image server is never contacted, and
    names that resolve to private or metadata addresses are refused with the same words as any other failure."""
    from moondream_cpp.server import ImagePolicy, ServerConfig

    shapes = Recorder(http_reply(body=(EX / "shapes.png").read_bytes(), headers=["Content-Type: image/png"]))
    policy = ImagePolicy(allow_remote=True, resolver=lambda h, p, **k: (
        stub_resolver(h, p) if h.endswith(".test") else socket.getaddrinfo(h, p, **k)))
    try:
        with inprocess_server(ServerConfig(images=policy)) as url:
            messages = set()
            for ref in (f"http://127.0.0.1:{shapes.port}/shapes.png", f"http://localhost:{shapes.port}/shapes.png",
                        f"http://[::ffff:127.0.0.1]:{shapes.port}/shapes.png", "http://metadata.test/latest/meta-data",
                        "http://ten.test/a.png", "http://mapped.test/a.png", "http://unknown.test/a.png"):
                status, err, _ = query_image(url, ref)
                assert status == 400, (ref, err)
                messages.add(err["error"]["message"])
            assert len(messages) == 1 and "could not fetch the image URL" in messages.pop()
            assert shapes.seen == []
    finally:
        shapes.close()


@pytest.fixture(scope="module")
def fetching():
    """A server that fetches remote images from loopback too (a test-only policy switch, not a CLI option), with a
    3 s deadline per fetch."""
    from moondream_cpp.server import ImagePolicy, ServerConfig

    policy = ImagePolicy(allow_remote=True, allow_loopback_fetches=True, remote_timeout_s=3)
    with inprocess_server(ServerConfig(images=policy)) as url:
        yield url


def test_redirects_banners_and_errors_all_read_the_same(fetching):
    png = (EX / "shapes.png").read_bytes()
    good = Recorder(http_reply(body=png, headers=["Content-Type: image/png"]))
    cases = {
        "redirect": Recorder(http_reply("302 Found", headers=[f"Location: http://127.0.0.1:{good.port}/"])),
        "redirect-ftp": Recorder(http_reply("301 Moved", headers=["Location: ftp://127.0.0.1/a.png"])),
        "404": Recorder(http_reply("404 Not Found", b"nope")),
        "ssh": Recorder(b"SSH-2.0-OpenSSH_9.6 secret-banner\r\n"),
        "silent-close": Recorder(b""),
        "oversize": Recorder(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n" + png),
    }
    closed = free_port()
    try:
        status, a, _ = query_image(fetching, f"http://127.0.0.1:{good.port}/shapes.png")
        assert status == 200 and a["answer"] == "red"
        messages = set()
        for name, r in [*cases.items(), ("refused", None)]:
            port = r.port if r else closed
            status, err, _ = query_image(fetching, f"http://127.0.0.1:{port}/a.png")
            msg = err["error"]["message"]
            assert status == 400 and "secret-banner" not in msg and "SSH" not in msg, (name, msg)
            messages.add(msg)
        assert len(messages) == 1, messages
        assert len(good.seen) == 1  # the redirect was not followed
    finally:
        for r in [good, *cases.values()]:
            r.close()


def test_proxies_from_the_environment_are_not_used(fetching, monkeypatch):
    proxy = Recorder(http_reply("502 Bad Gateway"))
    good = Recorder(http_reply(body=(EX / "shapes.png").read_bytes()))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    try:
        status, a, _ = query_image(fetching, f"http://127.0.0.1:{good.port}/shapes.png")
        assert status == 200 and a["answer"] == "red" and proxy.seen == [] and len(good.seen) == 1
    finally:
        proxy.close()
        good.close()


def test_a_dripping_server_is_cut_off_and_cannot_starve_other_requests(fetching):
    """A server sending a byte a second is cut off at the fetch's total deadline (3 s), not held by a per-read
    timeout; six of them at once take at most the fetch pool (the rest are 503 at once), and a data: URI request
    is answered meanwhile."""
    drip = Recorder(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n", drip=True)
    try:
        t0 = time.monotonic()
        status, err, _ = query_image(fetching, f"http://127.0.0.1:{drip.port}/slow.png", timeout=20)
        assert status == 400 and "could not fetch" in err["error"]["message"] and time.monotonic() - t0 < 5
        results = []
        slow = [threading.Thread(target=lambda: results.append(query_image(
            fetching, f"http://127.0.0.1:{drip.port}/slow.png", timeout=20)[0])) for _ in range(6)]
        for t in slow:
            t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        status, a, _ = query_image(fetching, data_uri(EX / "shapes.png"), timeout=20)
        assert status == 200 and a["answer"] == "red" and time.monotonic() - t0 < 2
        for t in slow:
            t.join()
        assert sorted(results) == [400] * 4 + [503] * 2
    finally:
        drip.close()


def test_the_pinned_connection_keeps_the_name_for_host_and_tls(tmp_path, monkeypatch):
    """The name is resolved once and the connection goes to that address, while the Host header (and, over https,
    SNI and the certificate check) still use the name."""
    import functools
    import http.server
    import shutil
    import ssl
    import subprocess

    from moondream_cpp.server import ImagePolicy, remote

    lookups = []

    def resolver(host, port, **_):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    policy = ImagePolicy(allow_remote=True, allow_loopback_fetches=True, resolver=resolver)
    png = (EX / "shapes.png").read_bytes()
    peer = Recorder(http_reply(body=png))
    try:
        assert remote.fetch_url(f"http://pics.test:{peer.port}/a.png?x=1", policy, time.monotonic() + 5) == png
        assert lookups == ["pics.test"]
        assert peer.seen[0].startswith(b"GET /a.png?x=1 HTTP/1.1\r\n")
        assert f"Host: pics.test:{peer.port}\r\n".encode() in peer.seen[0]
    finally:
        peer.close()
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp_path / "k.pem", "-out",
                    tmp_path / "c.pem", "-days", "1", "-subj", "/CN=pics.test", "-addext",
                    "subjectAltName=DNS:pics.test"], check=True, capture_output=True)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    tls = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(EX)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    port = tls.server_address[1]
    try:
        with pytest.raises(remote.FetchFailed):  # a certificate nobody vouches for
            remote.fetch_url(f"https://pics.test:{port}/shapes.png", policy, time.monotonic() + 5)
        trusting = ssl.create_default_context
        monkeypatch.setattr(remote.ssl, "create_default_context", lambda: trusting(cafile=str(tmp_path / "c.pem")))
        assert remote.fetch_url(f"https://pics.test:{port}/shapes.png", policy, time.monotonic() + 5) == png
        with pytest.raises(remote.FetchFailed):  # the certificate names pics.test, not other.test
            remote.fetch_url(f"https://other.test:{port}/shapes.png", policy, time.monotonic() + 5)
    finally:
        tls.shutdown()
