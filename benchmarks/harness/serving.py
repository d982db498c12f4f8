"""Concurrent streaming clients against an OpenAI-compatible server (ours or llama-server), for
benchmarks/parallel_serving.py: the servers started and stopped on loopback, a distinct picture per request (no two
requests share an image prefix, and none hits an image cache), every streamed chunk timestamped, and a config's
numbers from those timestamps."""
from __future__ import annotations

import base64
import io
import json
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from moondream_cpp.bench.processes import stop

QUESTION = "Describe this image."


def distinct_image_uri(seed: int, size: tuple[int, int] = (640, 480)) -> str:
    """A PNG data URI of a smooth picture unique to `seed` (speed does not depend on what it shows; a smooth picture
    keeps the upload small)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b, c = rng.uniform(0.05, 0.6, 3)
    px = np.stack([(x * a + seed) % 256, (y * b + 3 * seed) % 256, ((x + y) * c + 7 * seed) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray(px.astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launched(cmd: list[str], port: int, log_path: Path, ready_s: float = 600):
    """Run a server command until the block ends; yields its base URL once /health answers "ok". Its output goes to
    log_path: a pipe nobody reads fills up, and the server then blocks on it."""
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            try:
                if json.loads(urllib.request.urlopen(url + "/health", timeout=2).read()).get("status") == "ok":
                    break
            except (OSError, ValueError):
                pass
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{Path(cmd[0]).name} did not come up (exit {p.poll()}); the end of its log:\n"
                                   + Path(log_path).read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        yield url
    finally:
        stop(p)


def chat_body(image_uri: str, max_tokens: int, extra: dict | None = None) -> dict:
    """A streamed greedy chat request about one picture, asking for the usage in the last chunk."""
    return {"model": "moondream", "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
            "max_tokens": max_tokens, **(extra or {}),
            "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                      {"type": "image_url", "image_url": {"url": image_uri}}]}]}


def stream_one(url: str, body: dict, start: threading.Barrier | None = None, timeout: float = 900) -> dict:
    """One streamed request: when it was sent, the arrival time of each chunk carrying text, and the server's own
    usage and timings from its last chunks."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=data,
                                 headers={"Content-Type": "application/json"})
    if start is not None:
        start.wait()
    sent = time.perf_counter()
    stamps: list[float] = []
    usage, timings, finish = None, None, None
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                break
            msg = json.loads(payload)
            if "error" in msg:
                raise RuntimeError(f"the server sent an error in the stream: {msg['error']}")
            for choice in msg.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
                finish = choice.get("finish_reason") or finish
            usage = msg.get("usage") or usage
            timings = msg.get("timings") or timings
    if not usage:
        raise RuntimeError(f"a stream ended without usage (chunks with text: {len(stamps)})")
    # random weights can answer in bytes that never make valid UTF-8: llama-server then streams no text at all
    return {"sent": sent, "stamps": stamps, "usage": usage, "timings": timings or {}, "finish_reason": finish}


def run_clients(url: str, bodies: list[dict]) -> tuple[list[dict], float, float]:
    """Every body as its own client thread, all let go at once; (their records in order, the start, the end)."""
    start = threading.Barrier(len(bodies) + 1)
    out: list[dict | BaseException] = [None] * len(bodies)

    def client(i: int):
        try:
            out[i] = stream_one(url, bodies[i], start)
        except BaseException as e:  # re-raised in the caller's thread
            out[i] = e
            start.abort()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(bodies))]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        while t.is_alive():  # a join with a timeout lets Ctrl-C through
            t.join(0.5)
    t1 = time.perf_counter()
    for x in out:
        if isinstance(x, BaseException):
            raise x
    return out, t0, t1


def _pct(xs: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between ranks (statistics' 'inclusive' method)."""
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q) - 1]


def summarize(records: list[dict], t0: float, t1: float) -> dict:
    """A config's numbers. Token counts are the server's own (usage.completion_tokens); times are the arrival of the
    streamed chunks carrying text. decode of a client: (completion tokens - 1) / (last chunk - first chunk), summed
    over clients for the aggregate. steady_decode: the text chunks of every client that arrived while all clients
    were decoding (from the last first-chunk to the first last-chunk) over that window: batched decode with no
    prefill beside it (absent when no such window exists). longest_pause: the longest wait between two text chunks of
    a client (of any client, for the config). A client whose stream carried no text (random weights'
    bytes that never form valid UTF-8) counts with the server's own decode rate and no time to first token."""
    clients = []
    for r in records:
        n, t = r["usage"]["completion_tokens"], r["timings"]
        first, last = (r["stamps"][0], r["stamps"][-1]) if r["stamps"] else (None, None)
        if first is not None:
            ttft, decode_s = round(first - r["sent"], 6), round(last - first, 6)
            rate = round((n - 1) / (last - first), 3) if last > first and n > 1 else None
        else:  # no text streamed: the server's own decode rate, no time to first token
            ttft, decode_s = None, None
            rate = round(t["predicted_per_second"], 3) if t.get("predicted_per_second") else None
        clients.append({
            "ttft_s": ttft, "decode_s": decode_s, "completion_tokens": n, "text_chunks": len(r["stamps"]),
            "prompt_tokens": r["usage"].get("prompt_tokens"), "finish_reason": r["finish_reason"],
            "decode_tok_s": rate, **({} if first is not None else {"no_text": True}),
            # the longest wait between two text chunks once the answer began (another request's image and prefill)
            "longest_pause_s": round(max((b - a for a, b in zip(r["stamps"], r["stamps"][1:])), default=0.0), 6),
            # the server's own split of the time, where it reports one (both do, in llama.cpp server's names)
            "server_prompt_ms": t.get("prompt_ms"), "server_predicted_ms": t.get("predicted_ms"),
            **({"server_image_encode_ms": t["image_encode_ms"]} if "image_encode_ms" in t else {})})
    ttft = sorted(c["ttft_s"] for c in clients if c["ttft_s"] is not None)
    tokens = sum(c["completion_tokens"] for c in clients)
    out = {"clients": len(clients),
           "aggregate_decode_tok_s": round(sum(c["decode_tok_s"] or 0 for c in clients), 3),
           "total_tok_per_wall_s": round(tokens / (t1 - t0), 3), "wall_s": round(t1 - t0, 6),
           "completion_tokens": tokens, "ttft_p50_s": round(_pct(ttft, 50), 3), "ttft_p95_s": round(_pct(ttft, 95), 3),
           "clients_without_text": sum(not r["stamps"] for r in records),
           "longest_pause_s": max(c["longest_pause_s"] for c in clients),
           "chunks_equal_tokens": all(c["text_chunks"] == c["completion_tokens"] for c in clients)}
    texts = [r["stamps"] for r in records if r["stamps"]]
    lo, hi = max(s[0] for s in texts), min(s[-1] for s in texts)
    if hi > lo:
        inside = sum(lo < s <= hi for r in records for s in r["stamps"])
        out["steady_decode_tok_s"] = round(inside / (hi - lo), 3)
        out["steady_window_s"] = round(hi - lo, 3)
    out["per_client"] = clients
    return out
