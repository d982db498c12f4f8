"""From a request to a queued job, in the order that keeps a hostile or unlucky client cheap: the body is read with
its limit enforced while it arrives (chunks joined once), a large body is parsed off the event loop, every value is
checked (400s) before anything is queued, a full queue is a 503 before the image is fetched or decoded, at most a
few images decode at once, and what waits in the queue is the model's small preprocessed pixels (pixels.py: one
378x378 view for the 2024 models, at most 13 crops of 378x378 for the 2025 ones)."""
from __future__ import annotations

import asyncio
import functools

from starlette.requests import ClientDisconnect, Request

from . import images
from .engine import Engine, Job, Ticket
from .pixels import prepare
from .errors import ApiError
from .images import ImagePolicy
from .remote import RemoteFetcher
from .schemas import parse

# images decoded at once, in two lanes so that an ordinary photo never waits behind huge uploads: each large one may
# briefly need its full decoded size (up to 256 MB), a small one at most 2 x 4 MP x 3 bytes
DECODE_SLOTS = 2
SMALL_DECODE_SLOTS = 4
SMALL_IMAGE_PIXELS = 4_000_000
PARSE_OFF_LOOP_BYTES = 256 * 1024  # bodies above this are parsed in a thread


class Intake:
    def __init__(self, engine: Engine, policy: ImagePolicy, *, max_body_bytes: int, max_text_bytes: int):
        self.engine, self.policy = engine, policy
        self.max_body_bytes, self.max_text_bytes = max_body_bytes, max_text_bytes
        self.decoding = asyncio.Semaphore(DECODE_SLOTS)
        self.decoding_small = asyncio.Semaphore(SMALL_DECODE_SLOTS)
        self.remote = RemoteFetcher(policy)

    def close(self):
        self.remote.close()

    async def body(self, request: Request) -> bytes | bytearray:
        """The raw body, refused as soon as it passes the limit (a chunked body has no Content-Length to check).
        With a Content-Length (the guard has checked it against the limit) the chunks go straight into a buffer of
        that size: no second copy of a 30 MB body."""
        declared = request.headers.get("content-length", "")
        buffer = bytearray(int(declared)) if declared.isdigit() and int(declared) <= self.max_body_bytes else None
        chunks, size = [], 0
        try:
            async for part in request.stream():
                end = size + len(part)
                if end > self.max_body_bytes or (buffer is not None and end > len(buffer)):
                    raise ApiError(413, f"the request body is over the {self.max_body_bytes}-byte limit",
                                   code="body_too_large")
                if buffer is not None:
                    buffer[size:end] = part
                else:
                    chunks.append(part)
                size = end
        except ClientDisconnect:  # gone mid-body: nobody to answer, and no bug to log
            raise ApiError(400, "the client went away before sending its whole body") from None
        if buffer is not None:
            return buffer if size == len(buffer) else buffer[:size]
        return b"".join(chunks)

    async def parse(self, model, request: Request):
        raw = await self.body(request)
        if len(raw) > PARSE_OFF_LOOP_BYTES:
            return await asyncio.to_thread(parse, model, raw)
        return parse(model, raw)

    def check_text(self, question: str, history=(), what: str = "the question and chat history are",
                   param: str = "messages") -> None:
        """400 for text that cannot fit the context whatever its tokens (the model's longest token times its
        context length), before it reaches the single worker that would tokenize it. `what` and `param` name the
        text in the message."""
        size = len(question.encode()) + sum(len(q.encode()) + len(a.encode()) for q, a in history)
        if size > self.max_text_bytes:
            raise ApiError(400, f"{what} {size} bytes of text, more than the model's context can hold "
                           f"({self.max_text_bytes} bytes at most); shorten them", param=param,
                           code="context_length_exceeded")

    async def pixels(self, ref: str, max_crops: int | None = None) -> tuple[Ticket, object]:
        """A place in the queue and what the model reads of the image (pixels.prepare; max_crops: 2025 models' local
        crops at most); 503 (queue full) before any fetching or decoding."""
        kind = images.kind_of(ref)
        if kind == "remote" and not self.policy.allow_remote:
            raise ApiError(400, "remote image URLs are disabled on this server (start it with "
                           "--allow-remote-images); send the image as a data: URI", param="image_url")
        self.engine.check_room()
        if kind == "remote":
            raw = await self.remote.fetch(ref.strip())  # bounded by the same size limit
        elif kind == "data":
            raw = await asyncio.to_thread(images.read_inline, ref, self.policy)
        else:
            raw = await asyncio.to_thread(images.read_local, ref, self.policy)
        ticket = self.engine.admit()
        try:
            small = await asyncio.to_thread(images.pixel_count, raw) <= SMALL_IMAGE_PIXELS
            async with self.decoding_small if small else self.decoding:
                made = functools.partial(prepare, self.engine.model, max_crops=max_crops)
                return ticket, await asyncio.to_thread(images.decode, raw, made)
        except BaseException:
            ticket.release()
            raise

    async def job(self, ref: str, question: str, history, options, caption: str | None = None, *,
                  skill: str | None = None, max_objects: int | None = None) -> tuple[Job, Ticket]:
        """A job answering `question` (or captioning at length `caption`, or running `skill` on the object named in
        `question`), and its place in the queue."""
        if skill is None:
            self.check_text(question, history)
        else:
            self.check_text(question, history, "the object's name is", "object")
        ticket, pixels = await self.pixels(ref, options.max_crops)
        return Job(pixels, question, history, options, caption, skill, max_objects), ticket
