"""Text for people's terminals: what users control reaches them escaped, and a reader that goes away ends nothing.

File, module and class names, messages and the user's own output are the user's text. An escape sequence in a
module name (`add_module("\\x1b]0;...")`) could recolour the report, move the cursor, retitle the window or
hide lines; bidirectional-override characters can reorder what is shown. `printable` writes each such character
as a Python escape (`\\x1b`, `\\u202e`), and each byte of a file name that is not UTF-8 (which Python carries as a
surrogate escape) as `\\xff`, so the text stays one readable line. Every console the CLI builds is a `Terminal`,
which applies it to everything it prints: the report's own styling is untouched.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.segment import Segment

# C0 controls but tab and newline, DEL and the C1 controls, bidirectional marks and overrides, and surrogates
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` with every character a terminal would act on, rather than show, written as an escape."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte 0x80-0xff of a name that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class Terminal(Console):
    """A rich Console that prints user text through `printable` and survives a closed pipe (`audit | head`)."""

    def render(self, renderable: Any, options: Any = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            yield segment if segment.control else Segment(printable(segment.text), segment.style)

    def on_broken_pipe(self) -> None:
        """The reader stopped reading: print nothing more, and let the run finish with its own exit code (rich's
        default exits 1, which reads as "findings")."""
        self.quiet = True
        discard(self.file)


def discard(stream: Any) -> None:
    """Send what is still written to `stream` (a pipe nobody reads any more) to /dev/null, so neither later writes
    nor the flush at exit raise BrokenPipeError."""
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


class StdoutClosed(OSError):
    """stdout was closed when `audit` started (`audit ... >&-`) and something had to be written to it."""


class ClosedStdout:
    """Stands in for `sys.stdout` when the process has none: the first write raises StdoutClosed, so the run ends
    with one line saying so instead of printing its report nowhere."""

    encoding = "utf-8"
    errors = "strict"

    def write(self, text: str) -> int:
        raise StdoutClosed("stdout is closed: the report cannot be written (redirect it to /dev/null to discard it)")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def ensure_stdout() -> None:
    """Give a process started with stdout closed a `ClosedStdout` (Python sets `sys.stdout` to None)."""
    if sys.stdout is None:
        sys.stdout = ClosedStdout()  # type: ignore[assignment]
