"""One model, many clients: requests wait in a bounded queue for the model's sequences, answered by one worker
thread that decodes up to n_parallel of them together (moondream_cpp/parallel.py: continuous batching; a new
request joins between steps). A request takes its place in the queue (a Ticket) before its image is decoded, so a
full server says 503 before spending memory on it; what waits is the preprocessed pixels, not the decoded upload.
Pieces of an answer reach the waiting request through its asyncio queue; a request that goes away (client
disconnect) is cancelled and its generation stops at the next token, freeing its sequence."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field

from ..errors import ModelFileError, MoondreamError, PromptTooLongError
from ..options import GenerationOptions
from ..parallel import ParallelDecoder, Request
from ..runtime import Moondream
from .errors import ApiError

log = logging.getLogger(__name__)


@dataclass
class Job:
    image: object  # what pixels.prepare made of the upload (2024: 378x378x3 uint8 pixels; 2025: the crops)
    question: str
    history: list = field(default_factory=list)
    options: GenerationOptions = field(default_factory=GenerationOptions)
    caption: str | None = None  # a caption of this length (the model's own templates) instead of the question
    skill: str | None = None  # "detect" or "point" of the object named in `question`, instead of an answer
    max_objects: int | None = None  # with skill: at most this many (None: the revision's limit)

    def __post_init__(self):
        self.cancelled = threading.Event()
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()

    def _emit(self, kind, value=None):
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def cancel(self):
        self.cancelled.set()

    async def stream(self):
        """("piece", text) as the worker writes them, then ("done", Answer); an error is raised. Leaving early (a
        client that disconnects) cancels the job."""
        try:
            while True:
                kind, value = await self.events.get()
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "done":
                    return
        finally:
            self.cancel()

    async def answer(self):
        """The whole Answer (a region skill's: skills2025.RegionResult), once the worker has written it."""
        try:
            while True:
                kind, value = await self.events.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    return value
        finally:
            self.cancel()


class Ticket:
    """A place in the queue, held from before the image is decoded until the worker takes the job (or the request
    fails first and gives it back)."""

    def __init__(self, engine: "Engine"):
        self._engine, self._held = engine, True

    def release(self):
        if self._held:
            self._held = False
            self._engine._leave()


class Engine:
    def __init__(self, model: Moondream, max_queue: int = 16):
        self.model = model
        self.max_queue = max_queue
        self._q: queue.Queue[tuple[Job, Ticket] | None] = queue.Queue()  # bounded by the tickets
        self._places = 0  # tickets held: requests decoding their image or waiting for the worker
        self._lock = threading.Lock()
        self.busy = False
        self.active = 0  # sequences answering now (at most the model's n_parallel)
        self.parallel = model.context.n_seq
        self.served = 0
        self.cancelled = 0  # answers stopped because their client went away
        self.last = {}  # finish reason and token count of the last answer
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._work, name="moondream-worker", daemon=True)

    def start(self):
        self._thread.start()

    def _busy_error(self) -> ApiError:
        return ApiError(503, f"the server is busy ({self.max_queue} requests waiting); retry shortly",
                        code="server_busy", headers={"Retry-After": "1"})

    def _room(self) -> int:
        """Places for requests: max_queue waiting, plus the sequences free to answer at once (a request holds its
        place while its image is decoded, before the worker can take it)."""
        return self.max_queue + max(0, self.parallel - self.active)

    def check_room(self) -> None:
        """503 now if the queue is full (before a request fetches or decodes anything)."""
        if self._places >= self._room():
            raise self._busy_error()

    def admit(self) -> Ticket:
        """A place in the queue, or 503."""
        with self._lock:
            if self._places >= self._room():
                raise self._busy_error()
            self._places += 1
        return Ticket(self)

    def _leave(self):
        with self._lock:
            self._places -= 1

    def submit(self, job: Job, ticket: Ticket) -> Job:
        """Queue `job` in the place `ticket` holds (the worker gives the place back when it takes the job)."""
        self._q.put((job, ticket))
        return job

    @property
    def waiting(self) -> int:
        return self._places

    def status(self) -> dict:
        return {"busy": self.busy, "active": self.active, "parallel": self.parallel,
                "waiting": self.waiting, "served": self.served, "cancelled": self.cancelled, "last": self.last}

    def close(self):
        """Stop: the answer being written ends at its next token, waiting requests are dropped."""
        self._stopping.set()
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
                item[1].release()
        self._q.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _work(self):
        # several sequences serve images back to back: the vision tower stays loaded, as in a batch (not under
        # --low-ram); one sequence keeps the lean default (the tower loaded for each new image only)
        s = self.model.settings
        with self.model.vision.kept_loaded(s.n_parallel > 1 and s.keep_vision_in_batches):
            self._serve(ParallelDecoder(self.model))

    def _serve(self, decoder: ParallelDecoder):
        while True:
            while decoder.has_room():  # new requests join between steps; with none answering, wait for one
                self._note(decoder)  # a request can end within its start (an error, a region skill, one token)
                try:
                    item = self._q.get(block=not decoder.active())
                except queue.Empty:
                    break
                if item is None:
                    decoder.cancel_all()
                    return
                job, ticket = item
                ticket.release()
                if not job.cancelled.is_set():
                    self._start(decoder, job)
            self._note(decoder)
            decoder.step()  # a failure reaches the requests it ends through their on_error

    def _note(self, decoder: ParallelDecoder) -> None:
        """What /v1/status says is answering."""
        self.active = len(decoder.active())
        self.busy = self.active > 0

    def _start(self, decoder: ParallelDecoder, job: Job) -> None:
        def done(result):
            if job.skill is not None:
                self.last = {"skill": job.skill, "objects": len(result.objects)}
            else:
                self.last = {"finish_reason": result.finish_reason, "generated_tokens": len(result.tokens)}
                self.cancelled += result.finish_reason == "cancelled"
            self.served += 1
            job._emit("done", result)

        def failed(e):
            self.served += 1
            job._emit("error", self._api_error(job, e))

        stop = lambda: job.cancelled.is_set() or self._stopping.is_set()  # noqa: E731
        self.busy = True
        decoder.start(Request(job.image, job.question, job.caption, job.history, job.options, job.skill,
                              job.max_objects, should_stop=stop, on_piece=lambda piece: job._emit("piece", piece),
                              on_done=done, on_error=failed))  # any failure of the request reaches on_error

    @staticmethod
    def _api_error(job: Job, e: BaseException) -> ApiError:
        if isinstance(e, PromptTooLongError):
            return ApiError(400, str(e), param="object" if job.skill else "messages", code="context_length_exceeded")
        if isinstance(e, ModelFileError):  # the model's files, not the request: the log names them, the client 500
            log.error("the model's files failed while answering: %s", e)
            return ApiError(500, "the model could not be used; see the server log")
        if isinstance(e, MoondreamError):
            return ApiError(400, str(e))
        log.error("answering a request failed", exc_info=e)
        return ApiError(500, f"internal error ({e.__class__.__name__}); see the server log")
