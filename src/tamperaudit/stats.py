"""Intervals for rates: pure functions, no model."""

from __future__ import annotations

import math

from tamperaudit.records import Rate

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927).

    Preferred over the normal approximation because it stays inside [0, 1] and
    keeps its coverage near 0% and 100%, where refusal rates live. With no
    trials the rate is unknown and the interval is the whole range.
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(successes: int, trials: int) -> Rate:
    """A rate with its 95% Wilson interval, as stored in metrics files."""
    low, high = wilson_interval(successes, trials)
    return Rate(count=successes, total=trials, rate=successes / trials if trials else None, low=low, high=high)
