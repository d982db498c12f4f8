"""A conversation about an image, as moondream's sample.py holds one: the image encoded once, the history in
moondream's Question/Answer format. The CLI's interactive chat is a thin loop over this class."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import spec
from .errors import MoondreamError
from .options import GenerationOptions
from .runtime import Answer, EncodedImage, Moondream, Stream


@dataclass
class Turn:
    image: str
    question: str
    answer: str
    finish_reason: str
    timings: dict = field(default_factory=dict)


class ChatSession:
    """`ask` streams or returns answers; `set_image` switches pictures (recent ones stay encoded in the model's
    cache) and starts a new conversation; `clear` forgets the history; `save` writes the transcript as JSON."""

    def __init__(self, model: Moondream, image=None, *, options: GenerationOptions | None = None, **option_overrides):
        """options (or keywords max_tokens, temperature, top_p, seed, stop): how every answer is generated."""
        self.model = model
        self.options = GenerationOptions.of(options, **option_overrides)
        self.history: list[tuple[str, str]] = []
        self.turns: list[Turn] = []
        self.image: EncodedImage | None = None
        self.image_name = ""
        self._image_timings: dict | None = None  # how the current image was obtained, told with its first answer
        if image is not None:
            self.set_image(image)

    def set_image(self, image, name: str | None = None) -> EncodedImage:
        """Switch to another image (path, bytes, PIL image or array): a new picture starts a new conversation."""
        self.image, cached = self.model.encode_image_cached(image, self.options.max_crops)
        self._image_timings = {"image_encode_ms": 0.0 if cached else round(self.image.encode_ms, 2),
                               "image_cached": cached}
        self.image_name = name or (str(image) if isinstance(image, (str, os.PathLike)) else "image")
        self.history = []
        return self.image

    def clear(self) -> None:
        self.history = []

    def ask(self, question: str, *, stream: bool = False) -> Answer | Stream:
        """Answer `question` about the current image with the history so far; the turn joins the history once the
        answer is complete (an interrupted answer is dropped, as if never asked)."""
        if self.image is None:
            raise MoondreamError("no image yet: set one with set_image (in the chat: /image PATH)")
        s = self.model.query(self.image, question, stream=True, history=list(self.history), options=self.options)
        first, self._image_timings = self._image_timings, None  # later questions reuse the encoded image

        def run():
            yield from s
            a = s.answer
            a.timings.update(first or {})
            self.history.append((question, a.text))
            self.turns.append(Turn(self.image_name, question, a.text, a.finish_reason, dict(a.timings)))
            return a

        out = Stream(run())
        return out if stream else out.finish()

    def caption(self, length: str = "normal", *, stream: bool = False) -> Answer | Stream:
        if self.model.family == "2024":  # a caption is a question, which joins the history
            return self.ask(spec.caption_question(length), stream=stream)
        if self.image is None:
            raise MoondreamError("no image yet: set one with set_image (in the chat: /image PATH)")
        s = self.model.caption(self.image, length, stream=True, options=self.options)
        first, self._image_timings = self._image_timings, None

        def run():
            yield from s
            a = s.answer
            a.timings.update(first or {})
            self.turns.append(Turn(self.image_name, f"caption ({length})", a.text, a.finish_reason, dict(a.timings)))
            return a

        out = Stream(run())
        return out if stream else out.finish()

    def detect(self, obj: str, max_objects: int | None = None) -> list[dict]:
        """Boxes of `obj` in the current image (2025 models; see Moondream.detect). Not part of the conversation."""
        return self._region("detect", obj, max_objects)

    def point(self, obj: str, max_objects: int | None = None) -> list[dict]:
        """Points at `obj` in the current image (2025 models; see Moondream.point). Not part of the conversation."""
        return self._region("point", obj, max_objects)

    def _region(self, skill: str, obj: str, max_objects: int | None) -> list[dict]:
        if self.image is None:
            raise MoondreamError("no image yet: set one with set_image (in the chat: /image PATH)")
        found = getattr(self.model, skill)(self.image, obj, max_objects)
        # the transcript keeps them as the answer's text: what a reader of the saved chat wants to see
        self.turns.append(Turn(self.image_name, f"{skill} {obj}", json.dumps(found), "stop"))
        return found

    def transcript(self) -> dict:
        return {"model": self.model.name, "revision": self.model.revision.name,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "turns": [t.__dict__ for t in self.turns]}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path).expanduser()
        try:
            path.write_text(json.dumps(self.transcript(), indent=1) + "\n", encoding="utf-8")
        except OSError as e:
            raise MoondreamError(f"could not save the transcript to {path}: {e.strerror or e}") from None
        return path
