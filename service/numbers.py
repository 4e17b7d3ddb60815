"""Numbers read from request text (headers, queries), bounded before they are converted.

``int()`` on thousands of digits costs time quadratic in their count and, past 4,300 digits, raises a ValueError
that a handler does not expect (a 500). Nothing a request may say needs more than 18 digits.
"""

from __future__ import annotations

MAX_DIGITS = 18  # below 2**63: every count, length and size the service reads


def whole_number(text: str | bytes | None) -> int | None:
    """``text`` as a non-negative whole number, or None if it is not plain ASCII digits or has over 18 of them."""
    if text is None or not 0 < len(text) <= MAX_DIGITS:
        return None
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def longer_than(text: str | bytes, limit: int) -> bool:
    """Whether a Content-Length-like number ``text`` is over ``limit``: too many digits to read counts as over."""
    value = whole_number(text)
    if value is not None:
        return value > limit
    stripped = text.decode("latin-1") if isinstance(text, bytes) else text
    return stripped.isascii() and stripped.isdigit()  # all digits, but more of them than any limit
