"""Failing on findings at or above a severity, outside the CLI: the message `assert_clean` and the training
callbacks raise reads like the text report (file:line, severity, code, module, message, help)."""

from __future__ import annotations

from dataclasses import replace

from auditor.findings import Report, Severity


def threshold(fail_on: str | Severity) -> Severity:
    """`"error"`, `"warning"`, `"info"` (or a Severity) as a Severity; anything else is a ValueError."""
    return fail_on if isinstance(fail_on, Severity) else Severity.parse(str(fail_on))


def failure_message(report: Report, fail_on: Severity, subject: str) -> str | None:
    """None when no finding is at or above `fail_on`; else a headline and the text report of those findings."""
    from auditor.report.text import render

    failing = Report([replace(r, findings=[f for f in r.findings if f.severity >= fail_on]) for r in report.results])
    count = len(failing.findings)
    if not count:
        return None
    below = len(report.findings) - count
    also = f" ({below} below it not shown)" if below else ""
    headline = f"{subject} has {count} audit finding{'s' if count != 1 else ''} at or above {fail_on}{also}:"
    return headline + "\n" + render(failing).rstrip("\n")
