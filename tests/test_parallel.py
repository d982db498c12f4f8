"""Continuous batching (moondream_cpp/parallel.py): several requests decoded together give the answers the
one-at-a-time API gives (greedy), interleave their tokens, share an image's KV prefix, and fail or stop alone; the
server with --parallel streams two answers at once."""
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from moondream_cpp import Moondream
from moondream_cpp.errors import MoondreamError, PromptTooLongError
from moondream_cpp.gguf_models import demo_pair
from moondream_cpp.parallel import Request
from test_server import EX, chat_body, server

IMAGES = [EX / "shapes.png", EX / "circles.png", EX / "two-circles.png"]
QUESTIONS = ["What color is the circle?", "How many shapes are there?", "What shape is on the left?"]


def one_at_a_time(name, requests):
    """The independent computation: each request through the single-request API of a fresh n_parallel=1 load."""
    out = []
    with Moondream.load(*demo_pair(name)) as md:
        for r in requests:
            if r.skill:
                out.append(getattr(md, r.skill)(r.image, r.question))
            elif r.caption:
                out.append(md.caption(r.image, r.caption, options=r.options))
            else:
                out.append(md.query(r.image, r.question, options=r.options))
    return out


@pytest.mark.parametrize("name", ["moondream-demo-2024", "moondream-demo"])
def test_answers_decoded_together_equal_the_one_at_a_time_answers(name):
    requests = [Request(img, q) for img in IMAGES for q in QUESTIONS] + [Request(img, caption="short")
                                                                       for img in IMAGES]
    if name == "moondream-demo":
        requests += [Request(IMAGES[2], "circle", skill="detect"), Request(IMAGES[2], "circle", skill="point")]
    expected = one_at_a_time(name, requests)
    streamed = {}
    for k, r in enumerate(requests):
        r.on_piece = lambda piece, k=k: streamed.setdefault(k, []).append(piece)
    with Moondream.load(*demo_pair(name), n_parallel=3) as md:
        got = md.answer_all(requests)
    for k, (a, b) in enumerate(zip(got, expected)):
        if requests[k].skill:
            assert a.objects == b, k
            continue
        assert (a.text, a.tokens, a.finish_reason) == (b.text, b.tokens, b.finish_reason), (k, a.text, b.text)
        assert "".join(streamed.get(k, [])) == a.text
    # the second and third questions about an image found its prefix on another sequence: only their own tokens ran
    for k in (1, 2):
        t = got[k].timings
        assert t["image_cached"] and t["prompt_evaluated"] < 20 < t["prompt_tokens"], t


def test_answers_interleave_token_by_token():
    """Two captions decoded together: each step hands out a token of both, so neither waits for the other."""
    order = []
    requests = [Request(img, caption="normal", on_piece=lambda p, k=k: order.append(k))
                for k, img in enumerate(IMAGES[:2])]
    with Moondream.load(*demo_pair("moondream-demo-2024"), n_parallel=2) as md:
        a, b = md.answer_all(requests)
    assert len(a.tokens) > 5 and len(b.tokens) > 5
    assert order.index(1) < len(order) - 1 - order[::-1].index(0)  # b's first piece before a's last
    assert order.index(0) < len(order) - 1 - order[::-1].index(1)


def test_a_bad_request_fails_alone_and_a_stopped_one_ends_cancelled():
    pieces = []
    stop_after_two = Request(IMAGES[1], caption="normal", on_piece=pieces.append,
                             should_stop=lambda: len(pieces) >= 2)
    requests = [Request(IMAGES[0], "   "), Request(IMAGES[0], "why " * 5000), stop_after_two,
                Request(IMAGES[0], QUESTIONS[0]), Request(EX / "missing.png", QUESTIONS[0])]
    with Moondream.load(*demo_pair("moondream-demo-2024"), n_parallel=2) as md:
        got = md.answer_all(requests)
        alone = md.query(IMAGES[0], QUESTIONS[0]).text
    assert isinstance(got[0], MoondreamError) and "empty" in str(got[0])
    assert isinstance(got[1], PromptTooLongError)
    assert got[2].finish_reason == "cancelled" and len(got[2].tokens) == 2
    assert got[3].text == alone == "red"
    assert isinstance(got[4], MoondreamError) and "missing.png" in str(got[4])


def test_parallel_settings_are_checked():
    with pytest.raises(MoondreamError, match="parallel sequences"):
        Moondream.load(*demo_pair("moondream-demo-2024"), n_parallel=0)
    with Moondream.load(*demo_pair("moondream-demo-2024"), n_parallel=3) as md:
        one = md.kv_cache_bytes() / 3
        assert one == md.text_info.n_layer * md.n_ctx * 2 * md.n_embd * 2  # f16 K and V rows per position


def _stream(url, body, log, k):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            if line.startswith(b"data: {"):
                piece = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if piece:
                    log.append((k, time.monotonic(), piece))


def _streams(url, bodies):
    """Each body streamed by its own client, all at once: (client, arrival time, piece) in arrival order."""
    log: list = []
    threads = [threading.Thread(target=_stream, args=(url, b, log, k)) for k, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return log


def test_the_server_streams_two_long_answers_at_once(slow_model, tmp_path):
    """Random weights that never stop: two 400-token answers, each client has tokens before either finishes."""
    bodies = [chat_body(img, "Talk.", max_tokens=400, stream=True) for img in IMAGES[:2]]
    with server("-m", slow_model, "--parallel", "2", home=tmp_path) as (url, _):
        log = _streams(url, bodies)
        status = json.loads(urllib.request.urlopen(url + "/v1/status").read())
    times = {k: [t for j, t, _ in log if j == k] for k in (0, 1)}
    assert all(len(v) > 100 for v in times.values())
    assert min(times[0]) < max(times[1]) and min(times[1]) < max(times[0])
    assert status["parallel"] == 2 and status["served"] == 2 and status["last"]["generated_tokens"] == 400


def test_the_server_answers_together_as_one_by_one(tmp_path):
    """Greedy answers of concurrent clients equal the answers the same server gives them one at a time."""
    bodies = [chat_body(img, q, stream=True) for img in IMAGES for q in QUESTIONS[:2]]
    bodies += [{"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe this image."},
                                                          *b["messages"][0]["content"][1:]]}], "stream": True}
               for b in bodies[::2]]
    with server("-m", "moondream-demo-2024", "--parallel", "4", home=tmp_path) as (url, _):
        together = _streams(url, bodies)
        alone = []
        for k, b in enumerate(bodies):
            _stream(url, b, alone, k)
    text = lambda log, k: "".join(p for j, _, p in log if j == k)  # noqa: E731
    assert [text(together, k) for k in range(len(bodies))] == [text(alone, k) for k in range(len(bodies))]
    assert all(len(text(alone, k).split()) > 10 for k in range(6, 9))  # the captions: a sentence each


def test_serve_help_states_the_kv_memory():
    import subprocess

    from conftest import CLI

    env = {"COLUMNS": "200", "PATH": str(Path(CLI).parent)}
    out = subprocess.run([CLI, "serve", "--help"], capture_output=True, text=True, env=env)
    assert "--parallel" in out.stdout and "MiB per sequence" in out.stdout


def _counting_tower_loads(monkeypatch) -> list:
    """Each load of the vision tower (moondream_cpp.vision.VisionContext) appends to the list returned."""
    from moondream_cpp import vision

    loads, real = [], vision.VisionContext

    def counted(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(vision, "VisionContext", counted)
    return loads


@pytest.mark.parametrize("low_ram", [False, True])
def test_images_back_to_back_keep_the_vision_tower_loaded_unless_low_ram(monkeypatch, low_ram):
    """On demand (the default) the tower is loaded for each new image; answer_all and a server with several
    sequences take images back to back and keep it, as `caption` does; --low-ram never keeps it."""
    import asyncio

    from moondream_cpp.server.engine import Engine, Job

    loads = _counting_tower_loads(monkeypatch)
    preset = {"low_ram": True} if low_ram else {}
    with Moondream.load(*demo_pair("moondream-demo-2024"), n_parallel=2, **preset) as md:
        assert md.settings.mmproj_on_demand and len(loads) == 1  # opened at load: a broken mmproj fails there
        md.answer_all([Request(img, QUESTIONS[0]) for img in IMAGES])
        assert len(loads) == (3 if low_ram else 1)  # the open tower for the three (or for the first image only)
        assert not md.vision.is_open

        async def serve_three():
            engine = Engine(md)
            engine.start()
            try:
                jobs = [engine.submit(Job(md.prepare_image(img), QUESTIONS[1]), engine.admit()) for img in IMAGES]
                return [(await j.answer()).text for j in jobs]
            finally:
                await asyncio.to_thread(engine.close)

        md.clear_image_cache()
        texts = asyncio.run(serve_three())
    assert all(texts)
    assert len(loads) == (6 if low_ram else 2)  # once for the three (or once per image)


def test_a_prompt_goes_in_by_chunks_while_the_answers_in_flight_go_on(monkeypatch):
    """With an answer in flight, a new prompt is evaluated a chunk at a time, one step of that answer after each
    chunk; the answers are still the one-at-a-time answers."""
    from moondream_cpp import parallel
    from moondream_cpp.native_handles import TextContext

    monkeypatch.setattr(parallel, "PREFILL_CHUNK", 8)
    log = []
    for name in ("decode_rows", "decode_tokens"):
        real = getattr(TextContext, name)
        monkeypatch.setattr(TextContext, name, lambda self, x, start, logits=True, seq=0, real=real: (
            log.append(("prefill", seq, len(x))), real(self, x, start, logits, seq))[1])
    real_step = TextContext.decode_step
    monkeypatch.setattr(TextContext, "decode_step", lambda self, entries: (
        log.append(("step", tuple(e[0] for e in entries))), real_step(self, entries))[1])
    requests = [Request(IMAGES[0], caption="normal"), Request(IMAGES[1], QUESTIONS[1])]
    expected = one_at_a_time("moondream-demo-2024", requests)
    log.clear()
    with Moondream.load(*demo_pair("moondream-demo-2024"), n_parallel=2) as md:
        got = md.answer_all(requests)
        n_prompt = got[1].timings["prompt_tokens"]
    assert [(a.text, a.tokens) for a in got] == [(b.text, b.tokens) for b in expected]
    assert log[0] == ("prefill", 0, log[0][2]) and log[0][2] > 8  # the first prompt alone: whole
    second = [k for k, e in enumerate(log) if e[:2] == ("prefill", 1)]
    sizes = [log[k][2] for k in second]  # the image prefix, then the question's tokens, in at most 8 each
    assert sum(sizes) == n_prompt and max(sizes) == 8 and len(sizes) <= n_prompt // 8 + 2
    for a, b in zip(second, second[1:]):  # exactly one step of the first answer between two chunks
        assert log[a + 1:b] == [("step", (0,))], log[a:b + 1]


def test_a_step_failing_between_chunks_ends_both_answers_and_the_model_answers_after(monkeypatch):
    from moondream_cpp import parallel
    from moondream_cpp.errors import DecodeError
    from moondream_cpp.native_handles import TextContext

    monkeypatch.setattr(parallel, "PREFILL_CHUNK", 8)
    real_step, steps = TextContext.decode_step, []

    def failing_second_step(self, entries):
        steps.append(entries)
        if len(steps) == 2:  # between the second request's chunks
            raise DecodeError("llama.cpp failed to decode a batch")
        return real_step(self, entries)

    monkeypatch.setattr(TextContext, "decode_step", failing_second_step)
    with Moondream.load(*demo_pair("moondream-demo-2024"), n_parallel=2) as md:
        got = md.answer_all([Request(IMAGES[0], caption="normal"), Request(IMAGES[1], QUESTIONS[0]),
                             Request(IMAGES[1], QUESTIONS[0])])
        assert isinstance(got[0], DecodeError) and isinstance(got[1], DecodeError)
    monkeypatch.undo()
    alone = one_at_a_time("moondream-demo-2024", [Request(IMAGES[1], QUESTIONS[0])])[0]
    assert (got[2].text, got[2].tokens) == (alone.text, alone.tokens)  # the third, after: a whole answer


@pytest.mark.parametrize("skill", [None, "detect"])
def test_the_answers_in_flight_step_after_each_pass_of_the_vision_tower(monkeypatch, skill):
    """A 2025 image read in several crops, for a question or for detect: one step of the answer in flight after
    each pass of the tower."""
    from moondream_cpp.native_handles import TextContext, VisionContext

    log = []
    real_encode, real_step = VisionContext.encode, TextContext.decode_step
    monkeypatch.setattr(VisionContext, "encode", lambda self, px, n: (log.append("pass"), real_encode(self, px, n))[1])
    monkeypatch.setattr(TextContext, "decode_step", lambda self, entries: (
        log.append(("step", tuple(e[0] for e in entries))), real_step(self, entries))[1])
    with Moondream.load(*demo_pair("moondream-demo"), n_parallel=2) as md:
        big = md.prepare_image(IMAGES[0])  # the demo reads shapes.png in several crops
        n_passes = md.prepare_image(IMAGES[0]).pixels.local.shape[0] + 1
        second = Request(big, "circle", skill="detect") if skill else Request(big, QUESTIONS[1])
        got = md.answer_all([Request(IMAGES[1], caption="normal"), second])
    assert all(not isinstance(a, Exception) for a in got) and n_passes > 2
    passes = [k for k, e in enumerate(log) if e == "pass"][-n_passes:]  # the second image's
    assert "step" not in {e[0] for e in log[:passes[0]]}  # the first answer's first step comes after its first pass
    for k in passes:
        assert log[k + 1] == ("step", (0,)), log[k:k + 3]


def test_malformed_requests_and_a_bug_fail_alone(monkeypatch):
    """A caller's mistake in a Request is a clear MoondreamError; even an unexpected exception while one request
    starts ends that request only. The answer in flight meanwhile is the one-at-a-time answer."""
    from moondream_cpp.errors import ImageError

    in_flight = Request(IMAGES[0], caption="normal")
    expected = one_at_a_time("moondream-demo-2024", [in_flight, Request(IMAGES[1], QUESTIONS[0])])
    img = IMAGES[1]
    bad = [(Request(None, "q"), ImageError, "not NoneType"),
           (Request(img, 123), MoondreamError, "must be text"),
           (Request(img, "q", options={"max_tokens": 3}), MoondreamError, "GenerationOptions"),
           (Request(img, "circle", skill="count"), MoondreamError, "detect and point"),
           (Request(img, "q", history="ab"), MoondreamError, "list of (question, answer) pairs"),
           (Request(img, "q", history=[("a", 1)]), MoondreamError, "turn 0"),
           (Request(img, "boom"), RuntimeError, "a bug")]
    with Moondream.load(*demo_pair("moondream-demo-2024"), n_parallel=2) as md:
        real = md.answer_prompt

        def buggy(image, question, *args):
            if question == "boom":
                raise RuntimeError("a bug")
            return real(image, question, *args)

        monkeypatch.setattr(md, "answer_prompt", buggy)
        got = md.answer_all([in_flight, *(r for r, _, _ in bad), Request(img, QUESTIONS[0])])
    assert (got[0].text, got[0].tokens) == (expected[0].text, expected[0].tokens)
    for result, (_, kind, words) in zip(got[1:], bad):
        assert type(result) is kind and words in str(result), result
    assert got[-1].text == expected[1].text  # the sequence the bug hit answers again
