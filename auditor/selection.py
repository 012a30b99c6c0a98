"""Which findings a user wants: --select/--ignore, per-module ignores and inline `# audit: ignore[...]` comments."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from auditor.files import read_text
from auditor.findings import Finding

SUPPRESSION = re.compile(r"#\s*audit:\s*ignore(?:\[(?P<codes>[^\]]*)\])?", re.IGNORECASE)


def pattern_matches(pattern: str, code: str, name: str) -> bool:
    """A selector is ALL, a code ("DRO001"), a code prefix ("DRO", "INI0") or a rule name ("init-scale")."""
    pattern = pattern.strip()
    if pattern.upper() == "ALL":
        return True
    return code.startswith(pattern.upper()) or pattern.lower() == name


def is_valid_selector(pattern: str, known: Iterable[tuple[str, str]]) -> bool:
    return any(pattern_matches(pattern, code, name) for code, name in known)


@dataclass
class Selection:
    """The effective rule selection for one run."""

    select: list[str] = field(default_factory=lambda: ["ALL"])
    ignore: list[str] = field(default_factory=list)
    per_module_ignores: dict[str, list[str]] = field(default_factory=dict)

    def enabled(self, code: str, name: str) -> bool:
        selected = any(pattern_matches(p, code, name) for p in self.select)
        return selected and not any(pattern_matches(p, code, name) for p in self.ignore)

    def keeps(self, finding: Finding) -> bool:
        """Whether a finding survives the selection, the module globs and any inline suppression."""
        if not self.enabled(finding.code, finding.rule):
            return False
        if finding.module is not None:
            for glob, patterns in self.per_module_ignores.items():
                if fnmatch.fnmatchcase(finding.module, glob) and any(
                    pattern_matches(p, finding.code, finding.rule) for p in patterns
                ):
                    return False
        return not suppressed_inline(finding)


def suppressed_inline(finding: Finding) -> bool:
    """`# audit: ignore` or `# audit: ignore[CODE, ...]` on the line the finding points to."""
    if finding.file is None or finding.line is None:
        return False
    line = _source_line(finding.file, finding.line)
    match = SUPPRESSION.search(line)
    if match is None:
        return False
    codes = match.group("codes")
    if codes is None:
        return True
    return any(pattern_matches(c, finding.code, finding.rule) for c in codes.split(",") if c.strip())


def forget_lines() -> None:
    """Read the files' lines anew: `--fix` edits them (and `--diff` audits them as edited) between audits."""
    _file_lines.cache_clear()


@lru_cache(maxsize=256)
def _file_lines(path: str) -> tuple[str, ...]:
    try:
        return tuple(read_text(Path(path)).splitlines())
    except OSError:
        return ()


def _source_line(path: str, line: int) -> str:
    lines = _file_lines(path)
    return lines[line - 1] if 0 < line <= len(lines) else ""
