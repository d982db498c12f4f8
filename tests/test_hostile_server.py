"""Attacks on `moondream-cpp serve` (issue 27), each against a real server on loopback: what a web page in the user's
browser can send (text/plain bodies, rebound DNS names, foreign origins), memory and fairness (full queues, huge
images waiting, large bodies, long questions, huge files under --media-root) and requests whose clients hang up.
Remote image URLs: test_hostile_fetch.py. Each case states what a safe server answers; docs/security.md says why."""
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from conftest import CLI
from test_server import (EX, _stream_lines, chat_body, data_uri, free_port, inprocess_server, post,  # noqa: F401
                         server, wait_for)


def request(url, path, *, body=None, raw=None, headers=None, method=None, timeout=60):
    """(status, parsed JSON or raw bytes, headers) for any method and headers (urllib keeps a given Host)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, content, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, content, hdrs = e.code, e.read(), e.headers
    try:
        return status, json.loads(content), hdrs
    except ValueError:
        return status, content, hdrs


def status_of(url, key=None) -> dict:
    return request(url, "/v1/status", headers={"Authorization": f"Bearer {key}"} if key else {})[1]


# ------------------------------------------------------------------------------------- reachable from any web page
KEY = {"Authorization": "Bearer k3y"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    with server("--api-key", "k3y", "--allowed-host", "my.box", "--allowed-origin", "https://app.example",
                home=tmp_path_factory.mktemp("home")) as (url, _):
        yield url


def test_a_text_plain_body_is_415(guarded):
    """A page may POST text/plain anywhere without a preflight (a CORS simple request): JSON routes refuse it."""
    body = chat_body(EX / "shapes.png", "What color is the circle?")
    for kind in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x"):
        for path in ("/v1/chat/completions", "/v1/query", "/v1/caption"):
            status, err, _ = request(guarded, path, body=body, headers={**KEY, "Content-Type": kind})
            assert status == 415, (kind, path, err)
            assert err["error"]["type"] == "invalid_request_error" and "application/json" in err["error"]["message"]
    status, a, _ = request(guarded, "/v1/chat/completions", body=body,
                           headers={**KEY, "Content-Type": "application/json; charset=utf-8"})
    assert status == 200 and a["choices"][0]["message"]["content"] == "red"


def test_a_rebound_dns_name_is_refused(guarded):
    """DNS rebinding: a page at http://evil.example:PORT/ whose name now points at 127.0.0.1 sends Host:
    evil.example. Only localhost, loopback addresses, the bind address and --allowed-host names are answered."""
    port = guarded.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "my.box.evil.example", "localhost.",
                 "x" * 300):
        for path in ("/", "/health", "/v1/models"):
            status, err, _ = request(guarded, path, headers={**KEY, "Host": host})
            if host == "localhost.":  # the same name, fully qualified
                assert status == 200, (host, path)
                continue
            assert status == 421, (host, path, err)
            if path != "/":
                assert err["error"]["code"] == "host_not_allowed"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "my.box", f"MY.BOX:{port}"):
        assert request(guarded, "/v1/models", headers={**KEY, "Host": host})[0] == 200, host


def test_a_foreign_origin_is_403(guarded):
    port = guarded.rsplit(":", 1)[1]
    body = chat_body(EX / "shapes.png", "What color is the circle?")
    for origin in ("https://evil.example", "http://evil.example", "null", f"http://127.0.0.1:{int(port) + 1}",
                   f"https://127.0.0.1:{port}x", "chrome-extension://abc"):
        status, err, _ = request(guarded, "/v1/chat/completions", body=body,
                                 headers={**KEY, **JSON, "Origin": origin})
        assert status == 403 and err["error"]["code"] == "origin_not_allowed", (origin, err)
        assert request(guarded, "/v1/models", headers={**KEY, "Origin": origin})[0] == 403, origin
    # the page's own origin (same host and port), and the origin the operator allowed (with CORS headers)
    assert request(guarded, "/v1/models", headers={**KEY, "Origin": f"http://127.0.0.1:{port}"})[0] == 200
    assert request(guarded, "/v1/models", headers={**KEY, "Origin": f"http://localhost:{port}",
                                                   "Host": f"localhost:{port}"})[0] == 200
    status, _, hdrs = request(guarded, "/v1/models", headers={**KEY, "Origin": "https://app.example"})
    assert status == 200 and hdrs["Access-Control-Allow-Origin"] == "https://app.example"
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    status, _, hdrs = request(guarded, "/v1/chat/completions", headers=preflight, method="OPTIONS")
    assert status == 200 and hdrs["Access-Control-Allow-Origin"] == "https://app.example"
    status, _, hdrs = request(guarded, "/v1/chat/completions", method="OPTIONS",
                              headers={**preflight, "Origin": "https://evil.example"})
    assert status == 403 and "Access-Control-Allow-Origin" not in hdrs


def test_with_an_api_key_the_page_loads_and_v1_needs_the_key(guarded):
    status, page, hdrs = request(guarded, "/")
    assert status == 200 and hdrs["Content-Type"].startswith("text/html") and b'id="keyform"' in page
    status, png, hdrs = request(guarded, "/static/examples/shapes.png")
    assert status == 200 and png == (EX / "shapes.png").read_bytes()
    for path in ("/v1/models", "/v1/status"):
        assert request(guarded, path)[0] == 401, path
        assert request(guarded, path, headers={"Authorization": "Bearer wrong"})[0] == 401, path
        assert request(guarded, path, headers=KEY)[0] == 200, path
    assert request(guarded, "/v1/query", body={"image_url": data_uri(EX / "shapes.png"), "question": "What?"},
                   headers=JSON)[0] == 401


def test_health_reveals_nothing_about_past_requests(guarded):
    body = chat_body(EX / "shapes.png", "What color is the circle?")
    assert request(guarded, "/v1/chat/completions", body=body, headers={**KEY, **JSON})[0] == 200
    status, health, _ = request(guarded, "/health")
    assert status == 200 and health == {"status": "ok"}
    assert status_of(guarded, "k3y")["served"] >= 1  # the counts are there, behind the key


def test_binding_beyond_loopback_needs_an_api_key(tmp_path):
    """Refused, not warned: the server would answer every machine on the network."""
    for command in ("serve", "web"):
        for host in ("0.0.0.0", "::", "192.168.1.10", "myhost.lan"):
            p = subprocess.run([CLI, command, "--host", host, "--port", str(free_port())], capture_output=True,
                               text=True, timeout=60)
            assert p.returncode == 2 and "--api-key" in p.stderr, (command, host, p.stderr)
            assert "Traceback" not in p.stderr


def test_web_takes_an_api_key(tmp_path):
    with server("--api-key", "k3y", home=tmp_path, command="web") as (url, _):
        assert request(url, "/")[0] == 200
        assert request(url, "/v1/models")[0] == 401
        assert request(url, "/v1/models", headers=KEY)[0] == 200


# ------------------------------------------------------------------------------------------- memory and fairness
def png_bytes(side: int) -> bytes:
    """A side x side RGB PNG that compresses to little (a gradient) but decodes to side*side*3 bytes."""
    img = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def png_uri(side: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(side)).decode()


def rss_kb(pid, field="VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith(field + ":"))


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


LONG = {"max_tokens": 1500, "stream": True}


def query_image(url, ref, timeout=30):
    return post(url, "/v1/query", {"image_url": ref, "question": "What color is the circle?"}, timeout=timeout)


@pytest.fixture(scope="module")
def one_place(slow_model, tmp_path_factory):
    """A model that talks for seconds, with room for one waiting request."""
    with server("-m", slow_model, "--max-queue", "1", home=tmp_path_factory.mktemp("home")) as s:
        yield s


class Talker:
    """A client whose long streaming answer keeps the worker busy until release() (then it hangs up)."""

    def __init__(self, url):
        self.url, self.released = url, threading.Event()
        self.thread = threading.Thread(target=_stream_lines, args=(
            url, chat_body(EX / "shapes.png", "Talk.", **LONG), 2, self.released))
        self.thread.start()
        assert wait_for(lambda: status_of(url)["busy"])

    def release(self):
        self.released.set()
        self.thread.join()


@pytest.fixture()
def worker_busy(one_place):
    url, _ = one_place
    assert wait_for(lambda: not status_of(url)["busy"] and status_of(url)["waiting"] == 0)
    talker = Talker(url)
    yield talker
    talker.release()


def test_text_too_long_for_the_context_is_refused_without_waiting_for_the_worker(worker_busy):
    """A 300 KB question is refused by its size at once: the single worker never tokenizes it (before: it waited
    behind the answer being written, then was tokenized there)."""
    url = worker_busy.url
    t0 = time.monotonic()
    status, err, _ = post(url, "/v1/chat/completions", chat_body(EX / "shapes.png", "why " * 75_000), timeout=10)
    assert status == 400 and err["error"]["code"] == "context_length_exceeded", err
    status, err, _ = post(url, "/v1/query", {"image_url": data_uri(EX / "shapes.png"), "question": "x" * 300_000},
                          timeout=10)
    assert status == 400 and "context" in err["error"]["message"], err
    assert time.monotonic() - t0 < 3 and status_of(url)["waiting"] == 0


def test_a_full_queue_is_503_before_the_image_is_decoded(worker_busy):
    url = worker_busy.url
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(post(url, "/v1/chat/completions", chat_body(
        EX / "shapes.png", "What?", max_tokens=2))[0]))
    waiting.start()
    assert wait_for(lambda: status_of(url)["waiting"] == 1)
    junk = "data:image/png;base64," + base64.b64encode(b"not an image at all" * 50).decode()
    big = png_uri(6000)
    t0 = time.monotonic()
    for ref in (junk, big):  # not decoded at all: no 400 for the junk, no time for the big one
        status, err, headers = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": ref}}]}]}, timeout=10)
        assert status == 503 and headers["Retry-After"] == "1", err
    assert time.monotonic() - t0 < 2
    worker_busy.release()
    waiting.join()
    assert answers == [200]  # the one that waited is answered once the long one ends


def test_a_client_that_hangs_up_cancels_its_plain_request(one_place):
    """Not streaming: the server notices the closed connection and stops the generation, as for a stream."""
    url, _ = one_place
    assert wait_for(lambda: not status_of(url)["busy"])
    before = status_of(url)["cancelled"]
    host, port = url.split("//")[1].split(":")
    data = json.dumps(chat_body(EX / "shapes.png", "Talk.", max_tokens=1500)).encode()
    s = socket.create_connection((host, int(port)))
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    assert wait_for(lambda: status_of(url)["busy"])
    time.sleep(0.5)
    s.close()
    assert wait_for(lambda: status_of(url)["cancelled"] == before + 1 and not status_of(url)["busy"], 15)
    last = status_of(url)["last"]
    assert last["finish_reason"] == "cancelled" and last["generated_tokens"] < 1500


def test_connections_at_once_are_bounded(one_place):
    """Each connection may be sending a body of up to --max-body-mb: from 2 x --max-queue + 16 of them on (18
    here), uvicorn answers 503 instead of taking another; when they go, the server answers again."""
    url, _ = one_place
    host, port = url.split("//")[1].split(":")
    hogs = []
    try:
        for _ in range(17):
            hogs.append(socket.create_connection((host, int(port))))
            hogs[-1].sendall(f"POST /v1/query HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                             f"Content-Length: 1000000\r\n\r\n{{".encode())  # a body that never ends
            time.sleep(0.05)  # each one taken in before the next
        assert request(url, "/health")[0] == 503
        while len(hogs) > 1:
            hogs.pop().close()
        assert wait_for(lambda: request(url, "/health")[0] == 200, 10)
    finally:
        for s in hogs:
            s.close()


def test_waiting_requests_hold_small_pixels_not_decoded_images(slow_model, tmp_path):
    """12 requests with a 5000x5000 image (75 MB decoded each) wait behind a long answer: the queue holds the
    model's preprocessed pixels and at most two images decode at once, so the server's peak RSS grows by a fraction
    of 12 x 75 MB."""
    big = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, {
        "type": "image_url", "image_url": {"url": png_uri(5000)}}]}], "max_tokens": 2}
    with server("-m", slow_model, "--max-queue", "16", home=tmp_path) as (url, proc):
        post(url, "/v1/chat/completions", {**big, "max_tokens": 1})  # warm: first-use allocations are not growth
        release = threading.Event()
        talker = threading.Thread(target=_stream_lines, args=(url, chat_body(EX / "shapes.png", "Talk.", **LONG), 2,
                                                              release))
        talker.start()
        assert wait_for(lambda: status_of(url)["busy"])
        reset_peak(proc.pid)
        base = rss_kb(proc.pid)
        clients = [threading.Thread(target=post, args=(url, "/v1/chat/completions", big)) for _ in range(12)]
        for c in clients:
            c.start()
        assert wait_for(lambda: status_of(url)["waiting"] == 12, 120)
        growth_mb = (rss_kb(proc.pid, "VmHWM") - base) / 1024
        release.set()
        talker.join()
        for c in clients:
            c.join()
    print(f"peak RSS growth with 12 waiting 5000x5000 images: {growth_mb:.0f} MB")
    assert growth_mb < 400


UPLOADER = """
import sys, threading, urllib.request
url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
raw = open(path, "rb").read()
def go():
    req = urllib.request.Request(url, data=raw, headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=120)
    except urllib.error.HTTPError as e:
        print(e.code)
threads = [threading.Thread(target=go) for _ in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
"""


def test_large_bodies_do_not_freeze_other_clients(tmp_path):
    """Two 64 MB uploads (sent by another process): no step of the server holds the interpreter lock, and with it
    the event loop that answers everyone else, for long (before: one regex over the base64 text took ~0.4 s per
    30 MB). Measured inside the server's process by a thread that wakes every 5 ms."""
    from moondream_cpp.server import ImagePolicy, ServerConfig

    junk = base64.b64encode(os.urandom(48 * 2**20)).decode()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + junk}}
    (tmp_path / "body.json").write_text(json.dumps({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, image]}]}))
    del junk, image
    limit = 80 * 2**20
    gaps, stop = [], threading.Event()

    def watch():
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last - 0.005)
            last = now

    cfg = ServerConfig(max_body_bytes=limit, images=ImagePolicy(max_image_bytes=limit))
    with inprocess_server(cfg) as url:
        watcher = threading.Thread(target=watch)
        watcher.start()
        p = subprocess.run([sys.executable, "-c", UPLOADER, url + "/v1/chat/completions", str(tmp_path / "body.json"),
                            "2"], capture_output=True, text=True, timeout=300)
        stop.set()
        watcher.join()
        assert urllib.request.urlopen(url + "/health").status == 200
    print(f"longest stall in the server during two 64 MB uploads: {max(gaps) * 1000:.0f} ms")
    assert p.stdout.split() == ["400", "400"], p.stderr  # not an image: refused, after being read and decoded
    assert max(gaps) < 0.6


# ------------------------------------------------------------------------------------------- files and requests
def test_media_root_reads_at_most_the_limit_and_only_regular_files_inside(tmp_path):
    """A 1 GB (sparse) file under --media-root is a 413 from its size, never read whole; a FIFO is refused without
    hanging; symlinks out of the root are 403; messages name no server path."""
    media = tmp_path / "media"
    media.mkdir()
    with open(media / "huge.png", "wb") as f:
        f.truncate(2**30)
    os.mkfifo(media / "pipe.png")
    (media / "escape.png").symlink_to("/etc/passwd")
    (media / "ok.png").symlink_to(EX / "shapes.png")  # outside too: refused
    (media / "real.png").write_bytes((EX / "shapes.png").read_bytes())
    (media / "inside.png").symlink_to(media / "real.png")  # a link that stays inside is fine
    with server("--media-root", media, "--max-body-mb", "1", home=tmp_path) as (url, proc):
        base = rss_kb(proc.pid)
        reset_peak(proc.pid)
        t0 = time.monotonic()
        status, err, _ = query_image(url, "huge.png", timeout=20)
        assert status == 413 and time.monotonic() - t0 < 3, err
        assert (rss_kb(proc.pid, "VmHWM") - base) / 1024 < 100
        for ref, code in [("pipe.png", 404), ("escape.png", 403), ("ok.png", 403), (str(media / "nope.png"), 404),
                          ("/etc/passwd", 403), ("../media/../../etc/passwd", 403), ("~/x.png", 404)]:
            status, err, _ = query_image(url, ref, timeout=20)
            assert status == code, (ref, err)
            assert str(tmp_path) not in err["error"]["message"] and "/etc" not in err["error"]["message"], err
        for ref in ("real.png", "inside.png", f"file://{media / 'real.png'}"):
            status, a, _ = query_image(url, ref)
            assert status == 200 and a["answer"] == "red", (ref, a)


def test_error_messages_carry_no_server_paths():
    from moondream_cpp.server.errors import ApiError

    for msg in ("/home/me/models/moondream2/text.gguf: truncated", "cannot open /srv/media/a.png (errno 2)",
                "bad file /x.gguf"):
        out = ApiError(400, msg).body()["error"]["message"]
        assert "/home" not in out and "/srv" not in out and "/x.gguf" not in out and "<path>" in out, out
    kept = "send a data: URI (data:image/png;base64,...) or http://example.com/a.png; JPEG/PNG"
    assert ApiError(400, kept).body()["error"]["message"] == kept


def test_malformed_values_are_400s_before_anything_is_queued(tmp_path):
    good = chat_body(EX / "shapes.png", "What color is the circle?")
    cases = [{**good, "stream_options": "x"}, {**good, "stream": True, "stream_options": {"include_usage": "yes"}},
             {**good, "stream": "false"}, {**good, "max_tokens": 0}, {**good, "top_p": 2},
             {**good, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}]}]
    with server(home=tmp_path) as (url, _):
        for body in cases:
            status, err, _ = post(url, "/v1/chat/completions", body)
            assert status == 400 and err["error"]["type"] == "invalid_request_error", (body.keys(), err)
        assert status_of(url)["served"] == 0  # none of them reached the worker
        assert post(url, "/v1/chat/completions", good)[0] == 200
