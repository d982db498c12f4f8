"""What a request's image becomes before it waits in the queue: the model's PreparedImage (the 2024 models' one
378x378 view, stretched; the 2025 models' crops, a global view and up to max_crops overlapping local crops cut from
the full-size image). Either way the decoded upload is dropped before the job is queued; the worker's query encodes
it once per distinct image (the model's image cache), and its answer's timings say so."""
from __future__ import annotations

from ..runtime import Moondream, PreparedImage


def prepare(model: Moondream, image, max_crops: int | None) -> PreparedImage:
    """The model's input for a decoded PIL image: what the worker hands to the model."""
    return model.prepare_image(image, max_crops)


__all__ = ["prepare"]
