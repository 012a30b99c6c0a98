"""Output formats: one module per `--format`, each a function from a Report to what goes on stdout."""

from __future__ import annotations

from typing import Callable

from auditor.findings import Report

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
