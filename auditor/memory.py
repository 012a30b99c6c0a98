"""Memory sizes as users write them (`8GiB`, `500MB`) and the default budget a model's weights must fit in.

Above the budget a model is audited on the meta device (structure, no weights). The default is a fraction of
the memory available now: a real audit holds the weights about 1.3 times, and `--probe` adds a deep copy,
gradients and mixed-precision passes (about four times the weights), so a model over an eighth of what is free
could take half the machine once probed. No torch here: the CLI parses `--max-memory` before anything loads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from auditor.errors import UsageError
from auditor.limits import MAX_DIGITS, quoted

DEFAULT_FRACTION = 8  # the default budget is 1/8 of the available memory

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[a-z]*)\s*$")


def parse_size(text: str, option: str = "--max-memory") -> int:
    """`8GiB`, `500MB`, `1.5g`, `1048576` -> bytes. Decimal units are powers of 1000, `KiB`... of 1024."""
    match = _SIZE.match(text.lower())
    if match is None or match.group("unit") not in _UNITS:
        raise UsageError(f"{option} {quoted(text)}: expected a size such as 8GiB, 500MB or 2.5GB")
    number = match.group("number")
    if len(number.partition(".")[0]) > MAX_DIGITS:
        raise UsageError(f"{option} {quoted(text)}: more than {MAX_DIGITS} digits; no memory is that large")
    size = int(float(number) * _UNITS[match.group("unit")])
    if size <= 0:
        raise UsageError(f"{option} {quoted(text)}: the size must be positive")
    return size


def format_size(size: int) -> str:
    """Bytes for people: `4.6 GiB`, `310 MiB`, `12 KiB`."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def default_budget() -> int:
    """The default `--max-memory`: 1/8 of the memory available to this process now."""
    return available_memory() // DEFAULT_FRACTION


def available_memory() -> int:
    """Memory this process could use: MemAvailable, capped by a cgroup (container) limit; the physical memory
    where /proc is missing (macOS)."""
    available = _meminfo_available() or _physical_memory()
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30  # no way to ask: assume a small machine


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves (limit minus current use), or None without a limit."""
    folder = Path("/sys/fs/cgroup")
    try:
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((folder / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None
