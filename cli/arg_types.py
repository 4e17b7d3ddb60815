"""Argument types for the ``blockdrop`` subcommands: a bad value is refused by argparse, naming its flag, before any
work starts (not a traceback from deep inside, or a run that quietly means something else)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def threshold(text: str) -> float:
    """A policy threshold: a probability strictly between 0 and 1."""
    value = _number(text, float, "a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a policy threshold is between 0 and 1 (exclusive), got {value}")
    return value


def thresholds(text: str) -> list[float]:
    """Comma-separated policy thresholds; '' for none."""
    return [threshold(part.strip()) for part in text.split(",") if part.strip()]


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
