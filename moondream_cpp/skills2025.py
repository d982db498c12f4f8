"""detect and point on the 2025 revisions, as upstream runs them:

1. the image prefix and the revision's detect/point template around the object's name are evaluated (the same
   prompt cache and prefill as a question: the image's KV prefix is shared), and the next token is the argmax;
2. while that token is not EOS and fewer than max_objects were found: the coordinate decoder reads the last layer's
   output (before output_norm) and gives x, whose encoding goes in as a one-row embedding batch; y likewise;
   detect then decodes a size (width, height) and feeds its encoding; the logits after the last row fed give the
   next token (argmax; any token but EOS means "another object" and is never fed).

Each object costs 3 one-row decodes (point: 2). Boxes are centre ± size/2, unclamped, as fractions of the image's
width and height. The rows fed are dropped from the KV cache afterwards, so the prompt cache keeps describing it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import spec2025
from .errors import ModelFileError, MoondreamError
from .prompting import _image_prefix

SKILLS = ("detect", "point")  # the region skills, as the API and the server name them


@dataclass
class RegionResult:
    objects: list  # detect: dicts x_min, y_min, x_max, y_max; point: dicts x, y
    bins: list  # per object: (x bin, y bin) or (x bin, y bin, width bin, height bin)
    decodes: int = 0  # one-row decodes after the prompt
    timings: dict = field(default_factory=dict)


def check_request(md, skill: str, obj, max_objects) -> int:
    """The max_objects to use; MoondreamError for a model without the skill or a bad argument."""
    if skill not in SKILLS:
        raise MoondreamError(f"the region skills are {' and '.join(SKILLS)}, not {skill!r}")
    if md.family != "2025":
        raise MoondreamError(f"{skill} needs a 2025 moondream2 (this model is revision {md.revision.name}); pull or "
                             "convert a 2025 revision, e.g. moondream2")
    if not isinstance(obj, str) or not obj.strip():
        raise MoondreamError(f"the object to {skill} is empty; name what to look for, e.g. \"face\"")
    limit = md.prompting.revision.max_objects
    if max_objects is None:
        return limit
    if isinstance(max_objects, bool) or not isinstance(max_objects, (int, np.integer)) \
            or not 1 <= max_objects <= limit:
        raise MoondreamError(f"max_objects must be a whole number from 1 to {limit}, not {max_objects!r}")
    return int(max_objects)


def prompt_items(md, enc, skill: str, obj: str) -> list:
    """The image prefix, then the revision's template around the object's name (its leading-space rule)."""
    rev: spec2025.Revision2025 = md.prompting.revision
    t = rev.detect if skill == "detect" else rev.point
    ids = [*t.before, *md.tokenize(spec2025.template_text(t, obj)), *t.after]
    return _image_prefix(rev.bos, enc.key, enc.embeddings.shape[0]) + ids


def run(md, image, obj: str, skill: str, max_objects: int | None = None,
        max_crops: int | None = None, *, ctx=None, cache=None) -> RegionResult:
    """detect (boxes) or point (points) of `obj` in `image` on a loaded 2025 model `md` (runtime.Moondream). ctx,
    cache: another sequence of md's context and its PromptCache (parallel decoding) instead of sequence 0's; the
    decodes must be the only ones running (the hidden state is read from the last one)."""
    limit = check_request(md, skill, obj, max_objects)
    with_size = skill == "detect"
    head, capture = md.region_head, md.hidden_state
    ctx, cache = ctx or md.context, cache or md.cache
    if head.n_embd != md.n_embd:
        raise ModelFileError(f"the region head in {head.path} is {head.n_embd} wide but the text model "
                             f"{md.n_embd}: the files do not belong together")
    t0 = time.perf_counter()
    enc = md.encode_image(image, max_crops)
    items = prompt_items(md, enc, skill, obj)
    t1 = time.perf_counter()
    out = RegionResult([], [])
    with capture.armed():
        md.evaluate(items, {enc.key: enc}, ctx=ctx, cache=cache)
        t2 = time.perf_counter()
        pos = len(items)

        def feed(row: np.ndarray) -> np.ndarray:
            nonlocal pos
            capture.rows = None
            ctx.decode_rows(row, pos, True)
            pos += 1
            out.decodes += 1
            return capture.last_row()

        try:
            hidden = capture.last_row()
            token = int(np.argmax(ctx.logits()))
            per_object = 3 if with_size else 2
            while token != md.prompting.revision.eos and len(out.objects) < limit \
                    and pos + per_object <= ctx.n_ctx:
                xb, x = head.decode_coordinate(hidden)
                hidden = feed(head.encode_coordinate(x))
                yb, y = head.decode_coordinate(hidden)
                hidden = feed(head.encode_coordinate(y))
                if with_size:
                    (wb, hb), (w, h) = head.decode_size(hidden)
                    hidden = feed(head.encode_size(w, h))
                    out.objects.append({"x_min": x - w / 2, "y_min": y - h / 2, "x_max": x + w / 2,
                                        "y_max": y + h / 2})
                    out.bins.append((xb, yb, wb, hb))
                else:
                    out.objects.append({"x": x, "y": y})
                    out.bins.append((xb, yb))
                token = int(np.argmax(ctx.logits()))
        except BaseException:
            cache.reset()  # a failed decode emptied llama.cpp's cache; an interrupt leaves it unknown
            raise
        cache.truncate(len(items))  # the prompt stays cached; the region rows go
    t3 = time.perf_counter()
    out.timings = {"image_ms": round((t1 - t0) * 1000, 2), "prompt_ms": round((t2 - t1) * 1000, 2),
                   "objects_ms": round((t3 - t2) * 1000, 2), "prompt_tokens": len(items),
                   "ms_per_object": round((t3 - t2) * 1000 / max(1, len(out.objects)), 2)}
    return out
