#!/usr/bin/env python3
"""Attack a `moondream-cpp serve` on loopback (issue 27) and print what it answered.

Starts the server (bundled demo model, an API key, a media root, remote images on), runs every attack case once
(each with its own timeout, the whole run bounded), while a normal client keeps asking a question it knows the
answer to; prints a table (case, expected, got, ok), the server's RSS growth, and whether normal requests succeeded
during and after. Loopback only: every URL the cases give the server names this machine (127.0.0.1, localhost,
[::ffff:127.0.0.1], 0.0.0.0), so even a server without the defences contacts nothing else; private, link-local
(169.254.169.254) and other non-public targets are proved refused without any connection by a stub resolver in
tests/test_hostile_fetch.py. Redirect, banner and drip cases need a server that fetches from loopback at all: a
second one started with the test-only ImagePolicy.allow_loopback_fetches (not a CLI option).

    python scripts/attack_server.py                                  # this tree
    python scripts/attack_server.py --server-pythonpath /tmp/oldpkg  # a server from another tree (a 'before' run)

Exit status: 0 when every case is ok."""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "examples" / "shapes.png"
KEY = "attack-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
FETCH_SERVER = """import sys, uvicorn
from moondream_cpp import Moondream
from moondream_cpp.gguf_models import demo_pair
from moondream_cpp.server import ImagePolicy, ServerConfig, create_app
policy = ImagePolicy(allow_remote=True, allow_loopback_fetches=True, remote_timeout_s=3)  # test-only switch
uvicorn.run(create_app(Moondream.load(*demo_pair()), ServerConfig(images=policy)), host="127.0.0.1",
            port=int(sys.argv[1]), log_level="critical")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, path="/", body=None, raw=None, headers=None, method=None, timeout=20):
    """(status or 'timeout'/'reset', JSON or bytes, seconds)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, headers={**AUTH, **(headers or {})}, method=method)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, content = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, content = e.code, e.read()
    except (TimeoutError, socket.timeout):
        return "timeout", b"", time.monotonic() - t0
    except (urllib.error.URLError, ConnectionError) as e:
        return ("timeout" if "timed out" in str(e) else "reset"), b"", time.monotonic() - t0
    try:
        content = json.loads(content)
    except ValueError:
        pass
    return status, content, time.monotonic() - t0


def start(cmd, port, env, cwd, log) -> subprocess.Popen | None:
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=log)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return p
        except OSError:
            if p.poll() is not None:
                return None
            time.sleep(0.1)
    p.kill()
    return None


def rss_kb(pid, field="VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field + ":"))


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def uri(raw: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def ask(image_ref, question="What color is the circle?", **kw) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": question},
                                                      {"type": "image_url", "image_url": {"url": image_ref}}]}], **kw}


class Peer(threading.Thread):
    """A loopback TCP peer: answers each connection with `reply`, then drips a byte a second if asked."""

    def __init__(self, reply: bytes, drip=False):
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.reply, self.drip, self.seen = self.sock.getsockname()[1], reply, drip, 0
        self.start()

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.seen += 1
            threading.Thread(target=self.talk, args=(conn,), daemon=True).start()

    def talk(self, conn):
        with conn:
            try:
                conn.settimeout(30)
                conn.recv(65536)
                conn.sendall(self.reply)
                for _ in range(60 if self.drip else 0):
                    time.sleep(1)
                    conn.sendall(b"\0")
            except OSError:
                pass


def http_reply(status="200 OK", body=b"", headers=()) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode() + body


def cases(main, fetcher, media, shapes_peer):
    """(name, expected, thunk -> got). `got` is a status (or a short word); expected is what a safe server says."""
    good = uri(SHAPES.read_bytes())
    body = json.dumps(ask(good)).encode()[:-1]
    strip = png(Image.new("L", (1, 2_000_000)))
    wide16 = png(Image.fromarray(np.linspace(0, 65535, 3000 * 3000).astype(np.uint16).reshape(3000, 3000)))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    drip = Peer(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n", drip=True)
    banner = Peer(b"SSH-2.0-OpenSSH_9.6 attack-banner\r\n")
    redirect = Peer(http_reply("302 Found", headers=["Location: ftp://127.0.0.1/x.png"]))
    big = uri(png(Image.linear_gradient("L").resize((5000, 5000)).convert("RGB")))

    def st(path, **kw):
        return lambda: call(main, path, **kw)[0]

    def parallel(n, fn):
        out = []
        threads = [threading.Thread(target=lambda: out.append(fn())) for _ in range(n)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return "/".join(str(x) for x in sorted(set(out), key=str))

    def timed(fn, limit):
        t0 = time.monotonic()
        got = fn()
        return f"{got} in {time.monotonic() - t0:.1f}s" if time.monotonic() - t0 > limit else got

    def drip_starves():
        slow = [threading.Thread(target=call, args=(fetcher, "/v1/chat/completions"),
                                 kwargs={"body": ask(f"http://127.0.0.1:{drip.port}/x.png"), "timeout": 70})
                for _ in range(8)]
        [t.start() for t in slow]
        time.sleep(0.5)
        status, _, took = call(fetcher, "/v1/chat/completions", body=ask(good), timeout=15)
        [t.join() for t in slow]
        return status if took < 3 else f"{status} after {took:.0f}s"

    def image(ref, base=main):
        return lambda: call(base, "/v1/chat/completions", body=ask(ref))[0]

    return [
        ("text/plain POST (CORS simple request)", 415, st("/v1/chat/completions", raw=json.dumps(ask(good)).encode(),
                                                         headers={"Content-Type": "text/plain"})),
        ("Host: evil.example (DNS rebinding)", 421, st("/v1/models", headers={"Host": "evil.example"})),
        ("Origin: https://evil.example", 403, st("/v1/chat/completions", body=ask(good),
                                                headers={"Origin": "https://evil.example"})),
        ("/v1/models without the API key", 401, st("/v1/models", headers={"Authorization": ""})),
        ("web page without the API key", 200, st("/", headers={"Authorization": ""})),
        ("/health tells nothing of past requests", "{'status': 'ok'}",
         lambda: str(call(main, "/health", headers={"Authorization": ""})[1])),
        ("max_tokens: NaN", 400, st("/v1/chat/completions", raw=body + b', "max_tokens": NaN}')),
        ("seed: 1e999", 400, st("/v1/chat/completions", raw=body + b', "seed": 1e999}')),
        ("50,000 nested [", 400, st("/v1/chat/completions", raw=b'{"messages": ' + b"[" * 50000 + b"]" * 50000 + b"}")),
        ('stream: "false"', 400, st("/v1/chat/completions", body=ask(good, stream="false"))),
        ('stream_options: "x"', 400, st("/v1/chat/completions", body=ask(good, stream=True, stream_options="x"))),
        ("40 MB body (limit 32 MB)", 413, st("/v1/chat/completions", raw=b"{" + b" " * (40 * 2**20) + b"}")),
        ("1 MB question", 400, lambda: timed(st("/v1/chat/completions", body=ask(good, "why " * 250_000)), 2)),
        ("1x2,000,000 PNG strip", 400, st("/v1/chat/completions", body=ask(uri(strip)))),
        ("EPS (Ghostscript) as an image", 400, st("/v1/chat/completions", body=ask(uri(eps, "image/png")))),
        ("3000x3000 16-bit PNG", 200, st("/v1/chat/completions", body=ask(uri(wide16)))),
        ("8 parallel 5000x5000 uploads", 200, lambda: parallel(8, st("/v1/chat/completions", body=ask(big),
                                                                    timeout=120))),
        ("4 parallel 24 MB junk uploads", 400, lambda: parallel(4, st("/v1/chat/completions", body=ask(
            uri(os.urandom(18 * 2**20))), timeout=120))),
        ("--media-root: 1 GB file", 413, lambda: timed(image("huge.png"), 3)),
        ("--media-root: symlink to /etc/passwd", 403, image("passwd.png")),
        ("--media-root: FIFO", 404, lambda: timed(image("fifo.png"), 3)),
        ("remote: 127.0.0.1 image server", 400, image(f"http://127.0.0.1:{shapes_peer.port}/s.png")),
        ("remote: localhost", 400, image(f"http://localhost:{shapes_peer.port}/s.png")),
        ("remote: [::ffff:127.0.0.1]", 400, image(f"http://[::ffff:127.0.0.1]:{shapes_peer.port}/s.png")),
        ("remote: 0.0.0.0", 400, image(f"http://0.0.0.0:{shapes_peer.port}/s.png")),
        ("remote: loopback peer contacted", "never", lambda: "never" if shapes_peer.seen == 0 else
         f"{shapes_peer.seen} times"),
        ("remote: ftp://", 400, image("ftp://127.0.0.1/x.png")),
        ("remote: redirect to ftp://", 400, image(f"http://127.0.0.1:{redirect.port}/x.png", fetcher)),
        ("remote: SSH banner not echoed", "400, no echo", lambda: (lambda r: f"{r[0]}, " + (
            "echo" if "attack-banner" in json.dumps(r[1]) else "no echo"))(call(
                fetcher, "/v1/chat/completions", body=ask(f"http://127.0.0.1:{banner.port}/x.png")))),
        ("remote: 1 byte/s drip (3 s deadline)", 400, lambda: timed(image(f"http://127.0.0.1:{drip.port}/x.png",
                                                                         fetcher), 5)),
        ("8 drip URLs + a data: URI request", 200, drip_starves),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server-pythonpath", help="run the server from this tree instead (a 'before' run)")
    ap.add_argument("--budget-s", type=float, default=300, help="stop the whole run after this long")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="attack-"))
    media = work / "media"
    media.mkdir()
    with open(media / "huge.png", "wb") as f:
        f.truncate(2**30)  # sparse: no disk used
    os.mkfifo(media / "fifo.png")
    (media / "passwd.png").symlink_to("/etc/passwd")
    env = {**os.environ, "MOONDREAM_CPP_HOME": str(work / "home"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    if args.server_pythonpath:
        env["PYTHONPATH"] = args.server_pythonpath
    launcher = [sys.executable, "-c", "from moondream_cpp.cli.main import main; main()"]
    port, fport = free_port(), free_port()
    log = open(work / "server.log", "w")
    server = start([*launcher, "serve", "--port", str(port), "--api-key", KEY, "--media-root", str(media),
                    "--allow-remote-images", "--max-queue", "16"], port, env, work, log)
    if server is None:
        print((work / "server.log").read_text()[-2000:])
        return 2
    fetch_server = start([sys.executable, "-c", FETCH_SERVER, str(fport)], fport, env, work, log)
    url = f"http://127.0.0.1:{port}"
    furl = f"http://127.0.0.1:{fport}" if fetch_server else url  # an old tree fetches loopback anyway
    deadline = time.monotonic() + args.budget_s
    watchdog = threading.Timer(args.budget_s + 90, lambda: os._exit(3))  # stops by itself, whatever hangs
    watchdog.daemon = True
    watchdog.start()
    try:
        good = ask(uri(SHAPES.read_bytes()))
        call(url, "/v1/chat/completions", body=good)  # warm
        base = rss_kb(server.pid)
        with open(f"/proc/{server.pid}/clear_refs", "w") as f:
            f.write("5")  # peak RSS from here
        normal, stop = [], threading.Event()

        def keep_asking():
            while not stop.is_set():
                s, a, took = call(url, "/v1/chat/completions", body=good, timeout=30)
                normal.append((s == 200 and a["choices"][0]["message"]["content"] == "red", took))
                time.sleep(0.3)

        asker = threading.Thread(target=keep_asking, daemon=True)
        asker.start()
        rows = []
        for name, expected, thunk in cases(url, furl, media, Peer(http_reply(body=SHAPES.read_bytes()))):
            if time.monotonic() > deadline:
                rows.append((name, expected, "skipped (budget)", False))
                continue
            try:
                got = thunk()
            except Exception as e:  # noqa: BLE001 - a case that breaks is a row, not the end of the run
                got = f"error {e.__class__.__name__}"
            rows.append((name, expected, got, str(got) == str(expected) and server.poll() is None))
        stop.set()
        asker.join(60)
        after = call(url, "/v1/chat/completions", body=good)
        alive = server.poll() is None
        peak, end = (rss_kb(server.pid, "VmHWM"), rss_kb(server.pid)) if alive else (0, 0)
    finally:
        watchdog.cancel()
        for p in (server, fetch_server):
            if p is not None:
                p.kill()
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'expected':<20}  {'got':<24}  ok")
    for name, expected, got, ok in rows:
        got = str(got) if len(str(got)) <= 24 else str(got)[:21] + "..."
        print(f"{name:<{width}}  {str(expected):<20}  {got:<24}  {'yes' if ok else 'NO'}")
    oks = [ok for ok, _ in normal]
    print(f"\nserver alive after all cases: {alive}; RSS {base / 1024:.0f} MB before, peak +{(peak - base) / 1024:.0f} "
          f"MB, end +{(end - base) / 1024:.0f} MB")
    print(f"normal requests during the attacks: {sum(oks)}/{len(oks)} answered right, slowest "
          f"{max((t for _, t in normal), default=0):.1f} s; after: HTTP {after[0]}")
    return 0 if alive and all(r[3] for r in rows) and all(oks) and after[0] == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
