"""Continuous batching: up to N requests answered together by one loaded model, on llama.cpp sequences 0..N-1 of
its context (Settings.n_parallel; each sequence has its own KV cache of n_ctx positions).

A request takes the lowest free sequence between steps: its image is encoded (or found in the image cache), its
prompt evaluated on its sequence, reusing what that sequence holds, or a copy of another sequence's KV prefix when
both ask about the same image. With other answers in flight, each pass of the vision tower and each chunk of
PREFILL_CHUNK prompt positions is followed by one of their steps, so they keep streaming meanwhile. Then every step is
ONE batch holding the next token of every answering sequence, so the weights are read once for all of them; each
answer keeps its own sampler, stop rules and cancellation, and every answering sequence gets one token per step: a
long answer does not starve short ones.
detect/point requests run whole between steps (a few dozen one-row decodes), their vision-tower passes interleaved
with steps too. Sequence 0 is the one the single-request API uses, with its saved image-prefix states.

llama.cpp batches consecutive sequence ids together (its split of a multi-stream batch), so free sequences are
taken lowest first.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from . import skills2025
from .errors import DecodeError, MoondreamError
from .generate import Answer, AnswerText
from .options import GenerationOptions
from .prompt import check_question, image_prefix_len
from .prompt_cache import PromptCache

log = logging.getLogger(__name__)

# positions of a prompt evaluated between two steps of the answers in flight: at full size on 2 cores ~1.7 s of
# prefill (a 770-position image prompt in three chunks), next to ~3.7 s for the image's vision tower
PREFILL_CHUNK = 256


@dataclass
class Request:
    """One thing to answer. `question`, a caption of length `caption`, or a region skill ("detect"/"point") of
    the object named in `question`. on_piece receives the answer's text as it is generated; on_done its Answer
    (skills: skills2025.RegionResult); on_error a MoondreamError that ended it (the request alone)."""
    image: object
    question: str | None = None
    caption: str | None = None
    history: Sequence[tuple[str, str]] = ()
    options: GenerationOptions = field(default_factory=GenerationOptions)
    skill: str | None = None
    max_objects: int | None = None
    should_stop: Callable[[], bool] | None = None
    on_piece: Callable[[str], None] | None = None
    on_done: Callable[[object], None] | None = None
    on_error: Callable[[BaseException], None] | None = None


class _Slot:
    """A sequence and what it is doing: idle, or answering one request."""

    def __init__(self, seq: int, ctx, cache: PromptCache):
        self.seq, self.ctx, self.cache = seq, ctx, cache
        self.request: Request | None = None

    def begin(self, request, job, sample, limit, text, n_eval, t_prompt, restored):
        self.request, self.job, self.sample, self.limit, self.text = request, job, sample, limit, text
        self.n_eval, self.t_prompt, self.restored = n_eval, t_prompt, restored
        self.pending: int | None = None  # the sampled token to evaluate in the next step


class ParallelDecoder:
    """The scheduler over md's sequences. Not thread-safe: one thread calls start() and step()."""

    def __init__(self, md):
        self.md = md
        ctx = md.context
        self.slots = [_Slot(0, md.cache.store, md.cache)]
        for s in range(1, ctx.n_seq):
            view = ctx.sequence(s)
            self.slots.append(_Slot(s, view, PromptCache(view, 0, 0)))  # the images LRU is md.cache's

    @property
    def size(self) -> int:
        return len(self.slots)

    def active(self) -> list[_Slot]:
        return [s for s in self.slots if s.request is not None]

    def has_room(self) -> bool:
        return any(s.request is None for s in self.slots)

    # ------------------------------------------------------------------ starting a request
    def start(self, request: Request) -> None:
        """Take the lowest free sequence and evaluate the request's prompt (a region skill runs whole). A bad
        request or a failed prompt reaches request.on_error; a failed decode also resets every sequence."""
        slot = next(s for s in self.slots if s.request is None)
        try:
            opts = _options_of(request)
            if request.skill is not None:  # the answers in flight step after each of its vision-tower passes
                with self.md.vision.interleaved(self._step_or_raise if self.active() else None):
                    found = skills2025.run(self.md, request.image, request.question, request.skill,
                                           request.max_objects, opts.max_crops, ctx=slot.ctx, cache=slot.cache)
                _call(request.on_done, found)
                return
            self._begin_answer(slot, request, opts)
        except MoondreamError as e:
            slot.request = None
            if isinstance(e, DecodeError):  # llama.cpp emptied every sequence: the answers in flight fail too
                self._fail_all(e)
            _call(request.on_error, e)  # else the request's own (its image, its prompt's length...)
        except Exception as e:  # a bug met by this request alone: the other sequences are untouched, its own restarts
            slot.request = None
            slot.cache.reset()
            log.error("starting an answer failed", exc_info=e)
            _call(request.on_error, e)
        except BaseException as e:  # an interrupt: where llama.cpp stopped is unknown, every answer ends
            slot.request = None
            self._fail_all(e)
            raise

    def _begin_answer(self, slot: _Slot, request: Request, opts: GenerationOptions) -> None:
        md = self.md
        if request.caption is None:
            check_question(request.question, request.history)
        # with answers in flight, each pass of the vision tower and each chunk of the prompt is followed by one of
        # their steps: they go on streaming while the new request is read instead of waiting for all of it
        in_flight = bool(self.active())
        with md.vision.interleaved(self._step_or_raise if in_flight else None):
            job = md.answer_prompt(request.image, request.question, request.history, opts, request.caption)
        self._share_prefix(slot, job.items)
        chunked = {"chunk": PREFILL_CHUNK, "between": self._step_or_raise} if self.active() else {}
        n_eval = md.evaluate(job.items, {job.enc.key: job.enc}, ctx=slot.ctx, cache=slot.cache, **chunked)
        restored = md.last_prefix_restored  # this evaluation's
        text = AnswerText(md.token_bytes, opts.stop, md.prompting.end_marker)
        slot.begin(request, job, md.sampler(opts), md.token_limit(opts), text, n_eval, time.perf_counter(),
                   restored)
        self._next(slot, slot.ctx.logits())

    def _share_prefix(self, slot: _Slot, items: list) -> None:
        """Copy another sequence's KV of the same image prefix when this one does not hold it."""
        n = image_prefix_len(items)
        if n == 0 or slot.cache.kv[:n] == items[:n] or n >= len(items):
            return
        for other in self.slots:
            if other is not slot and other.cache.kv[:n] == items[:n]:
                slot.cache.truncate(0)
                self.md.context.copy_sequence(other.seq, slot.seq, n)
                slot.cache.kv = list(items[:n])
                return

    # ------------------------------------------------------------------ decoding
    def step(self) -> bool:
        """One batch: the pending token of every answering sequence; each then samples its next token. False when
        the batch failed (every answer in it has ended, every sequence is empty)."""
        slots = [s for s in self.active() if s.pending is not None]
        if not slots:
            return True
        entries = [(s.seq, s.pending, len(s.cache.kv)) for s in slots]
        try:
            self.md.context.decode_step(entries)
            for i, s in enumerate(slots):
                s.cache.extend([s.pending])
                s.pending = None
                self._next(s, self.md.context.logits_of(i))
        except BaseException as e:  # a failed decode emptied every sequence (a bug or an interrupt: unknown)
            self._fail_all(e)
            if not isinstance(e, Exception):
                raise
            if not isinstance(e, DecodeError):
                log.error("a decoding step failed", exc_info=e)
            return False
        return True

    def _step_or_raise(self) -> None:
        """A step between two chunks of a prompt: a failed one emptied that prompt's sequence too."""
        if not self.step():
            raise DecodeError("llama.cpp failed to decode a batch; the answers in it ended")

    def _next(self, slot: _Slot, logits) -> None:
        """Sample this sequence's next token from its logits; hand out its text, or finish the answer."""
        r = slot.request
        if r.should_stop is not None and r.should_stop():
            return self._finish(slot, "cancelled")
        try:
            tok = slot.sample(logits)
        except MoondreamError as e:  # damaged weights (NaN scores): this answer fails, the sequence stays valid
            slot.request = None
            _call(r.on_error, e)
            return
        if tok in self.md.stop_ids:
            return self._finish(slot, "stop")
        piece = slot.text.feed(tok)
        if piece:
            _call(r.on_piece, piece)
        if slot.text.stopped:
            return self._finish(slot, "stop")
        if len(slot.text.tokens) >= slot.limit or len(slot.cache.kv) >= slot.ctx.n_ctx:
            return self._finish(slot, "length")
        slot.pending = tok

    def _finish(self, slot: _Slot, reason: str) -> None:
        r, answer = slot.request, None
        slot.request = None
        for c in slot.text.finish(reason):
            if c.answer is not None:
                answer = c.answer
            elif c.text:
                _call(r.on_piece, c.text)
        answer.timings = self.md.answer_timings(slot.job, slot.n_eval, slot.t_prompt, len(answer.tokens),
                                                slot.restored)
        _call(r.on_done, answer)

    def cancel_all(self, reason: str = "cancelled") -> None:
        for s in self.active():
            self._finish(s, reason)

    def _fail_all(self, error: BaseException) -> None:
        """A failed batch emptied llama.cpp's whole KV cache: every answer in it fails, every sequence restarts."""
        failed = self.active()
        self._reset_all()
        for s in failed:
            r, s.request = s.request, None
            _call(r.on_error, error)

    def _reset_all(self) -> None:
        for s in self.slots:
            s.pending = None
            s.cache.kv = []
        self.md.context.clear()

    # ------------------------------------------------------------------ the Python API
    def run(self, requests: Iterable[Request]) -> list:
        """Answer every request, at most `size` at once; their results (Answer, RegionResult or the exception) in
        request order. Callbacks the requests carry are called as well."""
        requests = list(requests)
        results: list = [None] * len(requests)
        todo = list(enumerate(requests))[::-1]
        while todo or self.active():
            while todo and self.has_room():
                i, r = todo.pop()
                self.start(_recording(r, results, i))
            self.step()
        return results


def _options_of(request: Request) -> GenerationOptions:
    """The request's generation options (None: the defaults); anything else is the caller's mistake, said clearly."""
    if request.options is None:
        return GenerationOptions()
    if not isinstance(request.options, GenerationOptions):
        raise MoondreamError(f"a Request's options must be a GenerationOptions, not {type(request.options).__name__}")
    return request.options


def _recording(r: Request, results: list, i: int) -> Request:
    def done(value, user=r.on_done):
        results[i] = value
        _call(user, value)

    def error(e, user=r.on_error):
        results[i] = e
        _call(user, e)

    return Request(r.image, r.question, r.caption, r.history, r.options, r.skill, r.max_objects, r.should_stop,
                   r.on_piece, done, error)


def _call(fn, value) -> None:
    """A request's callback; one that fails is logged and does not stop the other requests."""
    if fn is not None:
        try:
            fn(value)
        except Exception:
            log.exception("a request's callback failed")


__all__ = ["Request", "ParallelDecoder", "Answer"]
