"""Bounds on what users write (options, config values, JSON), checked where it is parsed.

Python turns some absurd values into crashes of ours rather than errors of theirs: a structure nested thousands
deep exhausts the recursion limit, a 5000-digit number exceeds int()'s digit limit, and a timeout beyond what
the OS can wait for overflows. Checking against these bounds makes each such value one usage-error line.
"""

from __future__ import annotations

import math
from typing import Any

from auditor.errors import UsageError

MAX_NESTING = 32  # lists/objects/tuples inside one another: real constructor arguments and inputs use a few
MAX_DIMS = 16  # dimensions of one input tensor: images and video use 4 or 5
MAX_DIGITS = 18  # one integer in an input spec or a size: below int64 and far below int()'s 4300-digit limit
MAX_TIMEOUT = 7 * 24 * 3600.0  # one target's time limit: a week; 0 means no limit


def quoted(text: str, limit: int = 60) -> str:
    """A value as a message quotes it: whole when short, else its start and its length (one line stays short)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def check_timeout(value: Any, where: str) -> float:
    """Seconds one target may take: a finite number from 0 (no limit) to a week."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= MAX_TIMEOUT:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise UsageError(f"{where} {shown}: expected seconds from 0 (no limit) to {MAX_TIMEOUT:.0f} (a week)")
    return float(value)


def check_nesting(value: Any, where: str) -> None:
    """Refuse lists and mappings nested deeper than MAX_NESTING (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else ()
        for child in children:
            if isinstance(child, (dict, list, tuple)):
                if depth >= MAX_NESTING:
                    raise UsageError(f"{where}: nested more than {MAX_NESTING} levels deep")
                stack.append((child, depth + 1))
