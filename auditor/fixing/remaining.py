"""What is left after --fix, from the engine's re-audit of the fixed model: the findings that remain, shown at
the user's locations when they were there before, and notes on what could not be fixed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from auditor.findings import AppliedFix, Finding, TargetResult


def conclude(result: TargetResult, fixes: list[AppliedFix], notes: list[str], reaudit: TargetResult, diff: str | None) -> list[Finding]:
    """Update `result` with the fixes and what the re-audit left; returns the remaining findings. A finding
    that remains after --fix is not fixable by it (--fix tried, or it appeared only after the fixes and
    running --fix on the fixed model is what would fix it), so none is marked fixable."""
    remaining = [replace(f, fixable=False) for f in _at_user_locations(result.findings, reaudit)]
    fixed_keys = {(f.code, f.module) for f in fixes}
    still = sorted({(f.code, f.module) for f in remaining} & fixed_keys, key=str)
    lines = [f"fix: {n}" for n in dict.fromkeys(notes)]
    lines += [f"fix: {code} [{'<root>' if module == '' else module}]: still reported after the fix" for code, module in still]
    if result.capture is not None:
        result.capture.notes.extend(lines)
    result.findings = remaining
    result.fixes = list(fixes)
    result.fix_diff = diff
    return remaining


def _at_user_locations(original: list[Finding], reaudit: TargetResult) -> list[Finding]:
    """The re-audit's findings, shown at the original finding's location when the same (code, module) was
    reported before; findings the fixes introduced keep the fixed model's location."""
    pool: dict[tuple[str, str | None], list[Finding]] = {}
    for finding in original:
        pool.setdefault((finding.code, finding.module), []).append(finding)
    remaining = []
    for finding in reaudit.findings:
        candidates = pool.get((finding.code, finding.module))
        remaining.append(candidates.pop(0) if candidates else finding)
    return remaining


def describe(finding: Finding, folder: Path) -> str:
    """A remaining finding for FIXES.md; locations inside the fixed folder are relative to it."""
    from auditor.locations import display_path

    file = finding.file
    prefix = display_path(str(folder)).rstrip("/") + "/"
    if file and file.startswith(prefix):
        file = file[len(prefix):]
    where = f"{file}:{finding.line}" if file and finding.line else (file or "-")
    return f"{finding.code} {where} [{finding.module or '<root>'}] {finding.message}"
