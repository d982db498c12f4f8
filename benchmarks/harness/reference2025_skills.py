"""query, caption, detect and point on the PyTorch reference (moondream_cpp/reference/md2025.py), greedy, with the
public API's shapes of result, so a benchmark runs the same items through it and through llama.cpp.

The detect/point loop is written here from the spec in moondream_cpp/skills2025.py's docstring, on the reference's
own pieces (start/step/head and the region encoders and decoders): after the prompt, while the argmax token is not
EOS and fewer than max_objects were found, decode x (bin / bins), feed its encoding, y likewise, and for detect the
size (width and height bins: linear bin / 1024 in 2025-01-09, else 2^(10 bin / 1023 - 10)), fed as one encoding.
Prompts are tokenized by the caller's tokenizer (the GGUF's), so the two runs differ only in the network's numbers.
"""
from __future__ import annotations

import torch

from moondream_cpp import spec2025


class ReferenceSkills:
    def __init__(self, ref, tokenize, detokenize, max_objects: int | None = None):
        self.ref, self.rev = ref, ref.rev
        self.tokenize, self.detokenize = tokenize, detokenize
        self.max_objects = max_objects or self.rev.max_objects

    def prepare(self, image):
        """(what the skills take, the reference's own tiling of the image)."""
        return image, tuple(self.ref.tiling(image.height, image.width))

    def _answer(self, image, ids, max_tokens: int) -> str:
        out = self.ref.generate(image, ids, max_tokens, masked=self.rev.masked)
        return self.detokenize(out).strip()

    def _ids(self, template: spec2025.Template, text: str) -> list[int]:
        return spec2025.query_ids(self.rev, self.tokenize(spec2025.template_text(template, text)), template)

    def query(self, image, question: str, max_tokens: int) -> str:
        return self._answer(image, self._ids(self.rev.query, question), max_tokens)

    def caption(self, image, length: str, max_tokens: int) -> str:
        return self._answer(image, list(self.rev.captions[length]), max_tokens)

    def _size(self, b: int) -> float:
        b = torch.tensor(float(b))
        return float(b / 1024 if self.rev.size_bins == "linear" else torch.pow(2.0, b / 1023.0 * 10.0 - 10.0))

    @torch.no_grad()
    def region(self, image, obj: str, skill: str) -> list[dict]:
        ref = self.ref
        cache, h = ref.start(image, self._ids(self.rev.detect if skill == "detect" else self.rev.point, obj))
        objects: list[dict] = []

        def coordinate(hidden) -> float:
            logits = ref.decode_coordinate(hidden)
            return int(torch.argmax(logits)) / logits.shape[-1]

        while int(torch.argmax(ref.head(h))) != self.rev.eos and len(objects) < self.max_objects:
            x = coordinate(h)
            h = ref.step(cache, ref.encode_coordinate(x))
            y = coordinate(h)
            h = ref.step(cache, ref.encode_coordinate(y))
            if skill == "point":
                objects.append({"x": x, "y": y})
                continue
            size = ref.decode_size(h)
            w, hh = self._size(int(torch.argmax(size[0]))), self._size(int(torch.argmax(size[1])))
            h = ref.step(cache, ref.encode_size(w, hh))
            objects.append({"x_min": x - w / 2, "y_min": y - hh / 2, "x_max": x + w / 2, "y_max": y + hh / 2})
        return objects

    def detect(self, image, obj: str) -> list[dict]:
        return self.region(image, obj, "detect")

    def point(self, image, obj: str) -> list[dict]:
        return self.region(image, obj, "point")
