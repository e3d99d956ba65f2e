"""Percentiles from Prometheus histogram buckets, the way PromQL's ``histogram_quantile`` computes them.

Example::

    >>> buckets = [(0.1, 2.0), (0.5, 8.0), (1.0, 10.0), (float("inf"), 10.0)]
    >>> round(histogram_quantile(0.5, buckets), 3)   # 5th of 10 observations: inside (0.1, 0.5]
    0.3
    >>> histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    True
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["histogram_quantile"]


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q``-quantile (0–1) of cumulative ``(upper_bound, count)`` buckets, or ``None`` without observations.

    Like PromQL: linear interpolation inside the bucket holding the rank, the lowest bucket starts
    at 0 (these are durations and token counts, never negative), and a rank in the ``+Inf`` bucket
    gives the largest finite bound. Non-monotonic counts (a scrape racing an observation) are
    evened out with a running maximum, as Prometheus does.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, got {q}")
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        return None  # without the +Inf bucket the total is unknown
    counts: list[float] = []
    running = 0.0
    for _, count in ordered:
        running = max(running, count)
        counts.append(running)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, (upper, cumulative) in enumerate(zip((b for b, _ in ordered), counts)):
        if cumulative >= rank:
            if math.isinf(upper):
                return ordered[i - 1][0] if i > 0 else None
            lower = ordered[i - 1][0] if i > 0 else 0.0
            below = counts[i - 1] if i > 0 else 0.0
            in_bucket = cumulative - below
            if in_bucket <= 0:
                return upper
            return lower + (upper - lower) * (rank - below) / in_bucket
    return ordered[-2][0] if len(ordered) > 1 else None
