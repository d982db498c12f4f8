"""How an answer is generated: one options object shared by the Python API, ChatSession, the server and the CLI."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from .errors import MoondreamError


@dataclass(frozen=True)
class GenerationOptions:
    """max_tokens None: the revision's own limit. temperature 0: greedy; None: the revision's own default (greedy up
    to 2025-03-27, 0.5 with top_p 0.3 from 2025-04-14, as upstream samples). top_p None: the revision's default.
    seed None: a fresh random stream per answer. stop: strings that end the answer (not included).
    max_crops (2025 models): read the image in at most this many local crops, up to the load's max_crops (by
    default the model's own: 12 for upstream's); fewer is faster and less detailed. Ignored by 2024 models."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    max_crops: int | None = None

    def __post_init__(self):
        stop = self.stop
        stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if not all(isinstance(x, str) for x in stop):
            raise MoondreamError("stop must be a string or a list of strings")
        object.__setattr__(self, "stop", tuple(x for x in stop if x))
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 1):
            raise MoondreamError(f"max_tokens must be a whole number >= 1, not {self.max_tokens!r}")
        if self.temperature is not None and (not _finite(self.temperature) or self.temperature < 0):
            raise MoondreamError(f"temperature must be a finite number >= 0, not {self.temperature!r}")
        # top_p 0: only the most likely token, as OpenAI's API
        if self.top_p is not None and (not _finite(self.top_p) or not 0 <= self.top_p <= 1):
            raise MoondreamError(f"top_p must be a number in [0, 1], not {self.top_p!r}")
        if self.max_crops is not None:
            from .crops import check_max_crops

            check_max_crops(self.max_crops)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise MoondreamError(f"seed must be a whole number >= 0, not {self.seed!r}")

    def sampling(self, default_temperature: float, default_top_p: float) -> tuple[float, float]:
        """(temperature, top_p) with the revision's defaults where unset; a temperature given alone keeps top_p 1."""
        if self.temperature is None:
            return default_temperature, default_top_p if self.top_p is None else self.top_p
        return self.temperature, 1.0 if self.top_p is None else self.top_p

    @classmethod
    def of(cls, options: "GenerationOptions | None" = None, **overrides) -> "GenerationOptions":
        """`options` (or the defaults) with keyword overrides of its fields; an unknown keyword is a TypeError."""
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        return replace(options or cls(), **overrides)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

