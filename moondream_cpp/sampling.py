"""Choosing the next token from logits: greedy at temperature 0 (moondream's own default), else softmax at the
temperature, cut to the top-p nucleus. The padding rows past the real vocabulary are never chosen."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ModelFileError

Sampler = Callable[[np.ndarray], int]


def make_sampler(temperature: float, top_p: float, seed: int | None, n_real_tokens: int,
                 masked: tuple[int, ...] = ()) -> Sampler:
    """`masked`: token ids never chosen (2025-06-21 answers never emit its answer token, as upstream masks it)."""
    rng = np.random.default_rng(seed)
    masked = [t for t in masked if t < n_real_tokens]

    def real(logits: np.ndarray) -> np.ndarray:
        z = logits[:n_real_tokens]
        if np.isnan(z).any():  # damaged weights: no token can be chosen, and numpy's choice would raise on it
            raise ModelFileError("the model computed invalid scores (NaN) for the next token: its weights are "
                                 "damaged; download or convert the model again")
        if masked:
            z = z.copy()
            z[masked] = -np.inf
        return z

    def greedy(logits: np.ndarray) -> int:
        return int(np.argmax(real(logits)))

    def sample(logits: np.ndarray) -> int:
        z = real(logits).astype(np.float64) / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        if top_p < 1.0:
            order = np.argsort(-p)
            keep = order[: np.searchsorted(np.cumsum(p[order]), top_p) + 1]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        return int(rng.choice(len(p), p=p))

    return greedy if temperature <= 0 else sample
