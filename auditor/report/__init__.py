"""Output formats: one module per `--format`, each a function from a Report to what goes on stdout."""

from __future__ import annotations

from typing import Callable

from auditor.findings import Finding, Report

FORMATS = ("text", "json", "sarif", "github")


def renderer(name: str) -> Callable[[Report], str]:
    """The machine formats; text goes through a rich console instead (see auditor.report.text)."""
    if name == "json":
        from auditor.report.json import render
    elif name == "sarif":
        from auditor.report.sarif import render
    elif name == "github":
        from auditor.report.github import render
    else:
        raise ValueError(f"no plain renderer for format {name!r}")
    return render


def by_line(findings: list[Finding]) -> list[tuple[Finding, list[Finding]]]:
    """Findings of one rule at one source line, grouped: layers built in a loop share their creation line, and
    people want that line once, with the other modules named. (JSON and SARIF keep every finding.)"""
    groups: dict[tuple[object, ...], list[Finding]] = {}
    for finding in findings:
        key = (finding.code, finding.file, finding.line) if finding.file and finding.line else (id(finding),)
        groups.setdefault(key, []).append(finding)
    return [(group[0], group[1:]) for group in groups.values()]


def others_text(others: list[Finding], shown: int = 4) -> str:
    """"3 more at this line: `blocks.1.drop`, `blocks.2.drop`, `blocks.3.drop`"."""
    names = [f"`{f.module or '<root>'}`" for f in others[:shown]]
    more = f", ... ({len(others) - shown} more)" if len(others) > shown else ""
    return f"{len(others)} more at this line: {', '.join(names)}{more}"
