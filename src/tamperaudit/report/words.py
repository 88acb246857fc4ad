"""How the report says numbers: one formatter for each kind, shared by every renderer.

A leaf module: it reads records and nothing else of tamperaudit, so the builder, the
renderers, the verdict card, the plots and ``compare`` all say a rate or an interval the
same way for the same style.
"""

from __future__ import annotations

import math
from typing import Literal

from tamperaudit.records import IntervalBounds, Rate, ThresholdResult

IntervalStyle = Literal["brackets", "ci", "bare"]


def percent(value: float | None, digits: int = 0) -> str:
    """0.25 -> '25%' (digits after the point as asked); 'n/a' when unknown."""
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def interval(share: Rate | None, digits: int = 0, style: IntervalStyle = "brackets") -> str:
    """A rate with its 95% interval: '25% [10%, 47%]' (brackets), '25% [95% CI 10%-47%]' (ci),
    or '25% [10, 47]' (bare, for narrow tables); 'n/a' when there is no rate."""
    if share is None or share.rate is None:
        return "n/a"
    if style == "bare":
        return f"{100 * share.rate:.{digits}f}% [{100 * share.low:.{digits}f}, {100 * share.high:.{digits}f}]"
    low, high = percent(share.low, digits), percent(share.high, digits)
    inside = f"95% CI {low}-{high}" if style == "ci" else f"{low}, {high}"
    return f"{percent(share.rate, digits)} [{inside}]"


def significant(value: float, digits: int = 2) -> str:
    """A positive number to ``digits`` significant figures, never in e-notation: 0.00061, 12, 1,400."""
    if value <= 0:
        return "0"
    if value >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(value))
    return f"{round(value, decimals):.{decimals}f}"


def describe_fraction(fraction: float) -> str:
    """The relative threshold in words, before 'its baseline': 'half', or '25% of'."""
    return "half" if fraction == 0.5 else f"{100 * fraction:g}% of"


def describe_result(result: ThresholdResult, largest: int) -> str:
    """One threshold's figure with its cost (that of the seed whose budget is the median)."""
    if not result.reached:
        return f"not reached within {largest} steps"
    cost = result.cost
    if not cost:  # budget 0: no fine-tuning at all
        return f"{result.budget} steps (no fine-tuning)"
    dollars = "" if cost.dollars is None else f", ${cost.dollars:.4f}"
    return f"{result.budget} steps ({cost.tokens:,} tokens, {cost.seconds:.0f} s, {cost.flops / 1e12:.1f} TFLOP{dollars})"


def describe_bounds(bounds: IntervalBounds, largest: int) -> str:
    """An interval of budgets in words; an unreached bound reads 'not reached within N', never '-'."""
    def word(value: int | None) -> str:
        return f"not reached within {largest}" if value is None else str(value)

    if bounds.low is None:  # then the high bound is unreached too
        return f"not reached within {largest} steps"
    return f"{word(bounds.low)} to {word(bounds.high)} steps"
