"""`--format github`: one workflow command per finding, which GitHub Actions shows as an annotation."""

from __future__ import annotations

from auditor.findings import Finding, Report, Severity
from auditor.report import by_line, others_text

_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def render(report: Report) -> str:
    lines = []
    for result in report.results:
        if result.status != "ok":
            lines.append(f"::error title=audit::{_data(f'{result.target}: {result.error}')}")
        elif result.capture is not None and result.capture.stopped:
            lines.append(f"::warning title=audit::{_data(f'{result.target}: {result.capture.stopped}')}")
        lines.extend(_annotation(f, others) for f, others in by_line(result.findings))
    return "\n".join(lines)


def _annotation(finding: Finding, others: list[Finding]) -> str:
    properties = []
    if finding.file:
        properties.append(f"file={_property(finding.file)}")
        if finding.line:
            properties.append(f"line={finding.line}")
    properties.append(f"title={_property(f'{finding.code} {finding.rule}')}")
    module = f" [{finding.module or '<root>'}]" if finding.module is not None else ""
    also = f" ({others_text(others)})" if others else ""
    return f"::{_COMMAND[finding.severity]} {','.join(properties)}::{_data(finding.message + module + also)}"


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
