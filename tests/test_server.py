"""`moondream-cpp serve` as a real subprocess on loopback, driven by the real openai and moondream clients: answers
against ground truth, streaming, the image cache across requests, auth, every bad request as a 4xx with the server
still serving, a full queue, a client that disconnects mid-stream, and a load test with memory measured."""
import base64
import json
import os
import random
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from conftest import CLI

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"
TRUTH = [json.loads(x) for x in (EX / "questions.jsonl").read_text().splitlines()]  # known answers
DEMO_2024 = "moondream-demo-2024"  # the 2024 demo: answers every TRUTH question; without -m the 2025 demo serves


def data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(*args, home, command="serve"):
    port = free_port()
    log = Path(home) / f"server-{port}.log"  # a file, not a pipe: a chatty server never blocks on a full pipe
    with open(log, "w") as out:
        p = subprocess.Popen([CLI, command, "--port", str(port), *map(str, args)], stdout=out, stderr=out, text=True,
                             env={**os.environ, "MOONDREAM_CPP_HOME": str(home)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                if p.poll() is not None:
                    raise AssertionError(log.read_text())
                time.sleep(0.1)
        yield url, p
    finally:
        p.terminate()
        p.wait(timeout=30)


def wait_for(predicate, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def post(url, path, body, headers=None, raw=None, timeout=120):
    req = urllib.request.Request(url + path, data=raw if raw is not None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def with_fields(body: dict, fields: str) -> bytes:
    """`body` as JSON with raw `fields` text added, for values json.dumps cannot write (NaN, 1e999, huge ints)."""
    return json.dumps(body)[:-1].encode() + b", " + fields.encode() + b"}"


def chat_body(image, question, **kw):
    return {"model": "moondream", "messages": [{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": data_uri(image)}}]}], **kw}


def rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024


@contextmanager
def inprocess_server(config, model: str | None = None):
    """A bundled demo model (the default one unless `model` names another) served from this process (uvicorn in a
    thread), for ServerConfig fields that the CLI does not expose (test-only switches)."""
    import uvicorn

    from moondream_cpp import Moondream
    from moondream_cpp.gguf_models import DEMO, demo_pair
    from moondream_cpp.server import create_app

    md = Moondream.load(*demo_pair(model or DEMO))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(md, config), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    try:
        for _ in range(600):
            if srv.started:
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(30)
        md.close()


PARALLEL = [pytest.param(1, id="np1"), pytest.param(4, id="np4")]  # one answer at a time, or 4 decoded together


@pytest.fixture(scope="module", params=PARALLEL)
def demo(request, tmp_path_factory):
    with server("-m", DEMO_2024, "--parallel", request.param, home=tmp_path_factory.mktemp("home")) as s:
        yield s


def test_openai_client_plain_and_streaming(demo):
    import openai

    url, _ = demo
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    for row in TRUTH:
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(EX / row["image"])}},
                                             {"type": "text", "text": row["question"]}]}]
        r = client.chat.completions.create(model="moondream", messages=msgs, max_tokens=20)
        assert r.choices[0].message.content == row["answers"][0], row
        assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens >= 1
        pieces = [c.choices[0].delta.content or "" for c in
                  client.chat.completions.create(model="moondream", messages=msgs, stream=True)]
        assert "".join(pieces) == row["answers"][0]
    models = client.models.list()
    assert models.data[0].model_extra["input_modalities"] == ["text", "image"]


def test_history_maps_onto_moondream_turns_and_the_image_is_cached(demo):
    url, _ = demo
    img = data_uri(EX / "shapes.png")
    first = chat_body(EX / "shapes.png", "What color is the circle?")
    _, a, _ = post(url, "/v1/chat/completions", first)
    # the image comes last in the client's message: moondream still sees it first
    follow = {"messages": [{"role": "system", "content": "You are helpful."},
                           {"role": "user", "content": [{"type": "text", "text": "What color is the circle?"},
                                                        {"type": "image_url", "image_url": {"url": img}}]},
                           {"role": "assistant", "content": a["choices"][0]["message"]["content"]},
                           {"role": "user", "content": "How many shapes are there?"}]}
    status, b, _ = post(url, "/v1/chat/completions", follow)
    assert status == 200 and b["choices"][0]["message"]["content"] == "3"
    t = b["timings"]
    assert t["image_cached"] and t["cache_n"] >= 65  # neither re-encoded nor its prefix re-evaluated
    assert b["usage"]["prompt_tokens"] == t["cache_n"] + t["prompt_n"]


def test_the_official_moondream_client(demo):
    import moondream

    url, _ = demo
    md = moondream.vl(endpoint=url + "/v1")
    img = Image.open(EX / "shapes.png")
    assert md.query(img, "What color is the circle?") == {"answer": "red"}
    assert "".join(md.query(img, "How many shapes are there?", stream=True)["answer"]) == "3"
    cap = md.caption(img, length="short")["caption"]
    assert "".join(md.caption(img, stream=True)["caption"]) == md.caption(img)["caption"]
    assert cap.endswith(".") and any(c in cap for c in ("red", "blue", "yellow"))
    assert md.query(Image.open(EX / "letter.png"), "What letter is written?")["answer"] == "K"


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 100000 x 100000 pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("parallel", PARALLEL)
def test_every_bad_request_is_a_4xx_and_the_server_survives(tmp_path, parallel):
    media = tmp_path / "media"
    media.mkdir()
    (media / "ok.png").write_bytes((EX / "shapes.png").read_bytes())
    (tmp_path / "secret.png").write_bytes((EX / "shapes.png").read_bytes())
    good = chat_body(EX / "shapes.png", "What color is the circle?")

    def with_image(ref):
        return {"messages": [{"role": "user", "content": [{"type": "text", "text": "What?"},
                                                          {"type": "image_url", "image_url": {"url": ref}}]}]}

    bomb = "data:image/png;base64," + base64.b64encode(_bomb_png()).decode()
    text = "data:text/plain;base64," + base64.b64encode(b"hello, not an image").decode()
    cases = [
        (None, b"{not json", 400, "not valid JSON"),
        (None, b"[1, 2]", 400, "JSON object"),
        ({"model": "x"}, None, 400, "messages"),
        ({"messages": [{"role": "user", "content": "no image here"}]}, None, 400, "image_url part"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, None, 400, "role"),
        (with_image("data:image/png;base64,@@not-base64@@"), None, 400, "not valid base64"),
        (with_image(text), None, 400, "not a readable image"),
        (with_image(bomb), None, 400, "megapixel limit"),
        (with_image("ftp://example.com/a.png"), None, 400, "scheme 'ftp' is not allowed"),
        (with_image("http://127.0.0.1:9/a.png"), None, 400, "--allow-remote-images"),
        (with_image(str(tmp_path / "secret.png")), None, 403, "outside the media root"),
        (with_image("../secret.png"), None, 403, "outside the media root"),
        ({**good, "max_tokens": -3}, None, 400, "max_tokens"),
        ({**good, "temperature": "hot"}, None, 400, "temperature"),
        ({**good, "n": 3}, None, 400, "n must be 1"),
        ({**good, "tools": [{"type": "function", "function": {"name": "f"}}]}, None, 400, "cannot call tools"),
        ({**good, "response_format": {"type": "json_object"}}, None, 400, "plain text only"),
        ({**good, "logprobs": True}, None, 400, "logprobs are not available"),
        (chat_body(EX / "shapes.png", "why " * 600), None, 400, "context"),
        (None, b'{"messages": "' + b"x" * (2 * 2**20) + b'"}', 413, "limit"),
        # strict types: what Python's json and a loose parser would let through (or crash on) is a 400 naming the field
        (None, with_fields(good, '"max_tokens": NaN'), 400, "max_tokens should be a valid integer"),
        (None, with_fields(good, '"temperature": NaN'), 400, "temperature"),
        (None, with_fields(good, '"seed": 1e999'), 400, "seed should be a valid integer"),
        (None, with_fields(good, '"seed": 1' + "0" * 30), 400, "seed should be less than or equal to"),
        ({**good, "stream": "false"}, None, 400, "stream should be a valid boolean"),
        ({**good, "max_tokens": 2.5}, None, 400, "max_tokens should be a valid integer"),
        ({**good, "max_tokens": 10**6}, None, 400, "max_tokens must be at most"),
        ({**good, "stop": ["a", "b", "c", "d", "e"]}, None, 400, "stop: List should have at most 4 items"),
        (None, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "not valid JSON"),
        (None, with_fields(good, '"tools": ' + "[" * 300 + "]" * 300), 400, "not valid JSON"),
        ({"messages": [{"role": "user", "content": 5}]}, None, 400, "messages[0].content should be a valid string"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, None, 400,
         "messages[0].content[0]: type 'audio' is not supported"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"uri": "a.png"}}]}]}, None,
         400, "messages[0].content[0].image_url.url is required"),
    ]
    with server("--media-root", media, "--max-body-mb", "1", "--parallel", parallel, home=tmp_path) as (url, proc):
        for body, raw, code, words in cases:
            status, err, _ = post(url, "/v1/chat/completions", body, raw=raw)
            assert status == code, (words, err)
            assert words in err["error"]["message"] and err["error"]["type"], err
            assert " object at 0x" not in err["error"]["message"], err  # a message for people, not a Python repr
            assert str(ROOT) not in err["error"]["message"], err  # nor the server's own paths
        status, a, _ = post(url, "/v1/chat/completions", with_image("ok.png"))  # under the media root: allowed
        assert status == 200
        status, err, _ = post(url, "/v1/query", {"question": "What?"})
        assert status == 400 and "image_url is required" in err["error"]["message"]
        status, err, _ = post(url, "/v1/caption", {"image_url": data_uri(EX / "shapes.png"), "length": "epic"})
        assert status == 400
        status, err, _ = post(url, "/v1/query", {"image_url": data_uri(EX / "shapes.png"), "question": "What?",
                                                 "settings": {"seed": -1}})
        assert status == 400 and err["error"]["param"] == "settings.seed", err
        neutral = {"n": 1, "response_format": {"type": "text"}, "logprobs": False, "tools": [], "user": "u1"}
        status, a, _ = post(url, "/v1/chat/completions", {**good, **neutral})  # what changes nothing is accepted
        assert status == 200 and a["choices"][0]["message"]["content"] == "red"  # still serving, still right
        status, _, _ = post(url, "/v1/chat/completions", chat_body(EX / "shapes.png", "why " * 600))
        assert status == 400  # ends at its start: afterwards the status says nothing is answering
        assert wait_for(lambda: json.loads(urllib.request.urlopen(url + "/v1/status").read())["busy"] is False, 5)
        assert proc.poll() is None


def test_a_long_caption_from_a_model_without_long_captions_is_a_400(demo):
    """The 2024 revisions know short and normal captions only: "long" is refused, not answered as "normal"."""
    url, _ = demo
    status, err, _ = post(url, "/v1/caption", {"image_url": data_uri(EX / "shapes.png"), "length": "long"})
    assert status == 400 and err["error"]["param"] == "length", err
    assert "no long captions" in err["error"]["message"], err
    status, a, _ = post(url, "/v1/caption", {"image_url": data_uri(EX / "shapes.png"), "length": "normal"})
    assert status == 200 and a["caption"].endswith(".")  # the lengths it has still answer


def test_remote_image_urls_when_allowed(tmp_path):
    """--allow-remote-images: an http URL is fetched and answered (here from loopback, which only a test may allow:
    ImagePolicy.allow_loopback_fetches, not a CLI option); a 404, a refused connection and a server that never
    answers are 400s with one and the same message (no per-target difference, no Python repr), and the server goes
    on."""
    import functools
    import http.server

    from moondream_cpp.server import ImagePolicy, ServerConfig

    class Slow(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/slow"):
                time.sleep(6)  # past the server's 3 s fetch deadline
            return super().do_GET()

        def log_message(self, *a):
            pass

    pics = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Slow, directory=str(EX)))
    threading.Thread(target=pics.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{pics.server_address[1]}"
    policy = ImagePolicy(allow_remote=True, allow_loopback_fetches=True, remote_timeout_s=3)
    try:
        with inprocess_server(ServerConfig(images=policy), DEMO_2024) as url:
            for row in TRUTH[:2]:
                status, a, _ = post(url, "/v1/query", {"image_url": f"{base}/{row['image']}",
                                                       "question": row["question"]})
                assert status == 200 and a["answer"] == row["answers"][0], a
            messages = set()
            for ref in [f"{base}/missing.png", f"http://127.0.0.1:{free_port()}/a.png", f"{base}/slow/shapes.png"]:
                status, err, _ = post(url, "/v1/query", {"image_url": ref, "question": "What?"})
                msg = err["error"]["message"]
                assert status == 400 and "could not fetch the image URL" in msg, msg
                assert "<" not in msg and "Errno" not in msg, msg
                messages.add(msg)
            assert len(messages) == 1, messages  # a port scanner learns nothing from the words
            status, a, _ = post(url, "/v1/query", {"image_url": f"{base}/shapes.png", "question": "What color is "
                                                   "the circle?"})
            assert status == 200 and a["answer"] == "red"  # still serving
    finally:
        pics.shutdown()


def test_api_key_guards_every_route_but_health(tmp_path):
    with server("--api-key", "s3cret", home=tmp_path) as (url, _):
        body = chat_body(EX / "shapes.png", "What color is the circle?")
        assert post(url, "/v1/chat/completions", body)[0] == 401
        assert post(url, "/v1/chat/completions", body, {"Authorization": "Bearer nope"})[0] == 401
        status, a, _ = post(url, "/v1/chat/completions", body, {"Authorization": "Bearer s3cret"})
        assert status == 200 and a["choices"][0]["message"]["content"] == "red"
        assert post(url, "/v1/query", {"image_url": data_uri(EX / "shapes.png"), "question": "What color is the "
                    "circle?"}, {"X-Moondream-Auth": "s3cret"})[1]["answer"] == "red"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "/v1/models")
        assert e.value.code == 401
        assert urllib.request.urlopen(url + "/health").status == 200


def _stream_lines(url, body, n_lines=None, hold=None):
    """Open a streaming request; read n_lines SSE data lines (then drop the connection, after `hold` is set if
    given) or all of them."""
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=120)
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    s.sendall(head.encode() + data)
    f = s.makefile("rb")
    status = int(f.readline().split()[1])
    got = []
    for line in f:
        if line.startswith(b"data: "):
            got.append(line[6:].strip())
            if n_lines is not None and len(got) >= n_lines:
                break
    if hold is not None:
        hold.wait(120)
    s.close()
    return status, got


@pytest.mark.parametrize("parallel", PARALLEL)
def test_a_disconnected_client_frees_the_worker_and_a_full_queue_answers_503(slow_model, tmp_path, parallel):
    long = chat_body(EX / "shapes.png", "Talk.", max_tokens=1500, stream=True)
    with server("-m", slow_model, "--max-queue", "2", "--parallel", parallel, home=tmp_path) as (url, _):
        status, lines = _stream_lines(url, long, n_lines=5)  # read a few tokens, then hang up
        assert status == 200 and len(lines) == 5
        for _ in range(600):
            h = json.loads(urllib.request.urlopen(url + "/v1/status").read())
            if h["cancelled"] == 1 and not h["busy"]:
                break
            time.sleep(0.05)
        assert h["cancelled"] == 1 and h["last"]["finish_reason"] == "cancelled"
        assert h["last"]["generated_tokens"] < 1500  # generation stopped when the client left
        # long answers on every sequence, two waiting: the next request is turned away with Retry-After
        release = threading.Event()
        firsts = [threading.Thread(target=_stream_lines, args=(url, long, 2, release))  # answering, kept open
                  for _ in range(parallel)]
        for first in firsts:
            first.start()
        status_now = lambda: json.loads(urllib.request.urlopen(url + "/v1/status").read())  # noqa: E731
        assert wait_for(lambda: status_now()["active"] == parallel, 120)  # every sequence answering
        short = {**long, "stream": False, "max_tokens": 50}
        waiting = [threading.Thread(target=post, args=(url, "/v1/chat/completions", short))
                   for _ in range(2)]  # queued behind them
        for t in waiting:
            t.start()
        assert wait_for(lambda: status_now()["waiting"] == 2, 60)
        status, err, headers = post(url, "/v1/chat/completions", short)
        assert status == 503 and headers.get("Retry-After") == "1" and "busy" in err["error"]["message"]
        release.set()  # the streaming clients hang up; the queued ones run to their end
        for first in firsts:
            first.join()
        for t in waiting:
            t.join()
        status, a, _ = post(url, "/v1/chat/completions", {**long, "stream": False, "max_tokens": 3})
        assert status == 200  # the dropped clients freed the worker and the queue


@pytest.mark.parametrize("parallel", PARALLEL)
def test_load_eight_clients_mixed_requests_no_failures_memory_flat(tmp_path, parallel):
    """8 concurrent clients x 25 requests: mixed images and questions, some streaming, some hanging up early."""
    rows = TRUTH * 3
    with server("-m", DEMO_2024, "--parallel", parallel, home=tmp_path) as (url, proc):
        for row in TRUTH:  # warm the caches once, then measure memory
            post(url, "/v1/chat/completions", chat_body(EX / row["image"], row["question"]))
        before = rss_mb(proc.pid)
        failures, done = [], []

        def client(k):
            rnd = random.Random(k)
            for i in range(25):
                row = rnd.choice(rows)
                mode = rnd.choice(["plain", "stream", "stream", "drop"])
                body = chat_body(EX / row["image"], row["question"], stream=mode != "plain")
                try:
                    if mode == "plain":
                        status, a, _ = post(url, "/v1/chat/completions", body)
                        got = a["choices"][0]["message"]["content"] if status == 200 else f"HTTP {status}"
                    else:
                        status, lines = _stream_lines(url, body, n_lines=1 if mode == "drop" else None)
                        if mode == "drop":
                            done.append(1)
                            continue
                        got = "".join(json.loads(x)["choices"][0]["delta"].get("content") or ""
                                      for x in lines if x != b"[DONE]")
                    if got != row["answers"][0]:
                        failures.append((row["question"], got))
                    done.append(1)
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append((row["question"], repr(e)))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = rss_mb(proc.pid)
        health = json.loads(urllib.request.urlopen(url + "/v1/status").read())
    print(f"load: {len(done)} requests, RSS {before:.0f} -> {after:.0f} MB, {health['cancelled']} cancelled")
    assert failures == [] and len(done) == 200
    assert after - before < 40  # flat: no growth with the number of requests
