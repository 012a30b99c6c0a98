"""The two ways a run goes wrong before any finding: the user asked for something impossible, or a target broke."""

from __future__ import annotations


class UsageError(Exception):
    """Bad options, config or input specs: the whole run stops with exit 2."""


class TargetError(Exception):
    """One target could not be loaded, built or captured: it gets status "error" and the others still run.

    The message is one line that says what failed and where (file:line when there is one).
    """


def first_line(exc: BaseException) -> str:
    """An exception as one line of text: its message's first line, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
