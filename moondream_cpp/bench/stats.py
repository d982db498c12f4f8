"""How sure a benchmark's ratio is: the median of paired measurements and a confidence interval for it that assumes
nothing about the shared machine's noise (order statistics: each sample is above the true median with probability
1/2, so how many are is binomial)."""
from __future__ import annotations

import math
import statistics


def median_ci(xs: list[float], conf: float = 0.95) -> tuple[float, float | None, float | None]:
    """(median, low, high): the interval between the k-th smallest and the k-th largest sample covers the true median
    with probability >= conf. (None, None) bounds when there are too few samples for that confidence (n < 6 at 95%)."""
    xs = sorted(xs)
    n = len(xs)
    med = statistics.median(xs)
    alpha = (1 - conf) / 2
    k, below = 0, 0.0  # below: P(Binomial(n, 1/2) <= k - 1)
    while k < n // 2:
        p_k = math.comb(n, k) / 2 ** n
        if below + p_k > alpha:
            break
        below += p_k
        k += 1
    if k == 0:
        return med, None, None
    return med, xs[k - 1], xs[n - k]


def summary(xs: list[float], conf: float = 0.95, digits: int = 3) -> dict:
    """median, its confidence interval, the range and the count of paired ratios, for the JSON results."""
    med, lo, hi = median_ci(xs, conf)

    def r(x):
        return None if x is None else round(x, digits)
    return {"median": r(med), "ci": [r(lo), r(hi)], "ci_conf": conf, "range": [r(min(xs)), r(max(xs))], "n": len(xs)}
