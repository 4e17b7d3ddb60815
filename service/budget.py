"""Per-request compute budgets: a fraction of the full network's FLOPs, or a named level, mapped to a policy
threshold through the variant's calibrated accuracy / FLOPs curve (measured on validation, in its manifest)."""

from __future__ import annotations

import math
from typing import Any

from service.errors import Unprocessable


def parse_budget(text: str, levels: dict[str, float]) -> float:
    """``0.7`` (a fraction of the full network's FLOPs, in (0, 1]) or a level name such as ``fast``."""
    if text in levels:
        return levels[text]
    try:
        fraction = float(text)
    except ValueError:
        fraction = math.nan
    if not 0 < fraction <= 1:  # NaN fails this too
        names = ", ".join(f"{name} ({value:g})" for name, value in levels.items())
        raise Unprocessable(
            f"compute budget {text!r} is neither a fraction of the full network's FLOPs in (0, 1] nor a level: {names}"
        )
    return fraction


def point_for(points: list[dict[str, Any]], budget: float, variant: str) -> dict[str, Any]:
    """The calibrated point that fits ``budget``: the most accurate whose mean FLOPs fraction is at most the budget
    (of equally accurate ones, the cheapest)."""
    fitting = [p for p in points if p["flops_fraction"] <= budget]
    if not fitting:
        cheapest = min(p["flops_fraction"] for p in points)
        raise Unprocessable(
            f"compute budget {budget:g} is below what variant {variant!r} can do: its calibrated range is "
            f"[{cheapest:.3f}, 1]"
        )
    return max(fitting, key=lambda p: (p["accuracy"], -p["flops_fraction"]))


def budget_threshold(
    text: str, levels: dict[str, float], calibration: dict[str, Any], variant: str
) -> tuple[float, float]:
    """The policy threshold a compute budget (``parse_budget``'s text) maps to on ``variant``'s calibrated curve,
    and the fraction of the full network's FLOPs the budget asked for."""
    fraction = parse_budget(text, levels)
    points = calibration.get("points")
    if not points:
        raise Unprocessable(
            f"variant {variant!r} has no calibrated curve to map a budget to a threshold "
            "(blockdrop calibrate ARTIFACT writes one)"
        )
    return point_for(points, fraction, variant)["threshold"], fraction
