"""Running ``blockdrop`` as a user would and reading its refusal."""

from __future__ import annotations

import contextlib
import io

from cli.main import main as blockdrop


def refusal(argv: list[str]) -> str:
    """The message ``blockdrop ARGV`` prints when it refuses (exit status 2, library error turned into a line)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = blockdrop(argv)
    assert status == 2, f"expected a refusal (exit status 2), got {status}"
    return stderr.getvalue()
