"""What a request's image becomes before it waits in the queue, per model family: the 2024 models' one 378x378 view
(stretched), or the 2025 models' crops (a global view and up to max_crops overlapping local crops, cut from the
full-size image). Either way the decoded upload is dropped before the job is queued; the worker encodes what waits
here, once per distinct image (the model's image cache)."""
from __future__ import annotations

from dataclasses import dataclass

from ..image import preprocess
from ..runtime import EncodedImage, Moondream


@dataclass(frozen=True)
class Crops2025:
    """A 2025 image, cropped (at most 13 x 378 x 378 x 3 bytes) and keyed by the crops' hash."""

    crops: object  # moondream_cpp.crops.Crops
    key: str


def prepare(model: Moondream, image, max_crops: int | None):
    """The model's input for a decoded PIL image: what the worker hands to encoded()."""
    if model.multicrop is not None:
        return Crops2025(*model.multicrop.crops_of(image, max_crops))
    return preprocess(image, model.image_size)


def encoded(model: Moondream, prepared) -> tuple[object, dict]:
    """(image for the model's query/caption, timings to report with the answer). 2024 pixels go to the runtime as they
    are; 2025 crops are encoded here (the runtime takes an image, not crops made ahead of time), through the model's
    image cache as the runtime does it, so that a repeated image is not encoded again. Runs on the worker thread."""
    if not isinstance(prepared, Crops2025):
        return prepared, {}
    enc = model.cache.image(prepared.key)
    if enc is not None:
        return enc, {"image_encode_ms": 0.0, "image_cached": True}
    enc = model.multicrop.encode(prepared.crops, prepared.key)
    model.cache.add_image(enc)
    return enc, {"image_encode_ms": round(enc.encode_ms, 2), "image_cached": False,
                 **model.multicrop.timings_of(enc.key)}


__all__ = ["Crops2025", "prepare", "encoded", "EncodedImage"]
