"""Generation in three layers, each usable alone:

- `token_steps`: the per-token step: sample from the last logits, hand the token out, evaluate it;
- `chunks`: a stream of text chunks as the answer will read, the last one carrying finish_reason, timings and the
  whole Answer;
- `Stream` / `Answer`: what the public API returns (iterate a Stream for text pieces; `.answer` afterwards).
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterator

from .native_handles import TextContext
from .prompt_cache import PromptCache
from .sampling import Sampler


@dataclass
class Answer:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (the revision's stop rule or a stop string), "length" or "cancelled"
    timings: dict = field(default_factory=dict)


@dataclass
class Chunk:
    text: str
    finish_reason: str | None = None  # set on the last chunk only, with the answer
    answer: Answer | None = None


def token_steps(ctx: TextContext, cache: PromptCache, sample: Sampler, stop_ids: set[int], limit: int,
                should_stop: Callable[[], bool] | None = None) -> Generator[int, None, str]:
    """Tokens of the answer; returns why it ended. A token is evaluated only when the next one is asked for, so a
    consumer that stops (a stop string) leaves the KV cache holding exactly what was evaluated."""
    n = 0
    while n < limit:
        if should_stop is not None and should_stop():
            return "cancelled"
        tok = sample(ctx.logits())
        if tok in stop_ids:
            return "stop"
        yield tok
        n += 1
        if len(cache.kv) >= ctx.n_ctx:
            return "length"
        ctx.decode_tokens([tok], len(cache.kv))
        cache.extend([tok])
    return "length"


def chunks(steps: Generator[int, None, str], token_bytes: Callable[[int], bytes], stop: tuple[str, ...],
           end_marker_rule: bool) -> Iterator[Chunk]:
    """Text as it is generated, pulled from `steps` (AnswerText's rules); the last chunk carries the Answer."""
    text = AnswerText(token_bytes, stop, end_marker_rule)
    finish = "length"
    while True:
        try:
            tok = next(steps)
        except StopIteration as end:
            finish = end.value
            break
        piece = text.feed(tok)
        if piece:
            yield Chunk(piece)
        if text.stopped:
            break
    yield from text.finish(finish)


class AnswerText:
    """An answer's text as its tokens arrive, pushed one at a time (a parallel decoder feeds many). A stop string
    ends the answer (not included); text that may still become one is held back. `end_marker_rule`: a trailing "<"
    or "<END" is cut (revisions that stop on any token of "<END>")."""

    def __init__(self, token_bytes: Callable[[int], bytes], stop: tuple[str, ...], end_marker_rule: bool):
        self.token_bytes, self.stop, self.end_marker_rule = token_bytes, stop, end_marker_rule
        self.tokens: list[int] = []
        self.stopped = False  # a stop string was met: feed no more
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._cleaner = AnswerCleaner()
        self._shown, self._sent = "", 0  # the answer text so far, and how much of it has been handed out
        self._hold = max((len(x) for x in stop), default=1) - 1

    def feed(self, tok: int) -> str:
        """The text this token makes safe to hand out ("" while it is held back)."""
        self.tokens.append(tok)
        self._shown += self._cleaner.feed(self._decoder.decode(self.token_bytes(tok)))
        if self.stop:
            cut = min((i for i in (self._shown.find(x) for x in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self._shown, self.stopped = self._shown[:cut].rstrip(), True
        # held back: what may still become a stop string, and the whitespace before it, which the cut strips
        shown, sent = self._shown, self._sent
        safe = len(shown) if self.stopped else max(sent, len(shown[: max(0, len(shown) - self._hold)].rstrip()))
        self._sent = max(sent, safe)
        return shown[sent:safe]

    def finish(self, finish_reason: str) -> Iterator[Chunk]:
        """The rest of the text, then the last chunk with the Answer (finish_reason "stop" after a stop string)."""
        if self.stopped:
            text, finish_reason = self._shown, "stop"
        else:
            self._shown += self._cleaner.feed(self._decoder.decode(b"", final=True))
            if len(self._shown) > self._sent:
                yield Chunk(self._shown[self._sent:])
            text = b"".join(self.token_bytes(t) for t in self.tokens).decode("utf-8", "replace")
            if self.end_marker_rule:
                text = re.sub("<$|<END$", "", text)
        yield Chunk("", finish_reason, Answer(text.strip(), self.tokens, finish_reason))


class Stream:
    """Iterate for text pieces as they are generated; `.answer` holds the whole Answer afterwards."""

    def __init__(self, pieces: Iterator):
        self._pieces = pieces
        self.answer: Answer | None = None

    @classmethod
    def of_chunks(cls, source: Iterator[Chunk]) -> "Stream":
        def pieces():
            for c in source:
                if c.answer is not None:
                    return c.answer
                if c.text:
                    yield c.text
            raise RuntimeError("the chunk stream ended without an answer")
        return cls(pieces())

    def __iter__(self) -> Iterator[str]:
        self.answer = yield from self._pieces

    def finish(self) -> Answer:
        """Run to the end; the whole Answer."""
        for _ in self:
            pass
        return self.answer


class AnswerCleaner:
    """Streams text as the final answer will read: leading whitespace dropped, trailing whitespace held back."""

    def __init__(self):
        self.started = False
        self.pending = ""

    def feed(self, s: str) -> str:
        if not self.started:
            s = s.lstrip()
            if not s:
                return ""
            self.started = True
        s = self.pending + s
        stripped = s.rstrip()
        self.pending = s[len(stripped):]
        return stripped
