"""`--format github`: one workflow command per finding, which GitHub Actions shows as an annotation."""

from __future__ import annotations

from auditor.findings import Report, Severity
from auditor.report import Group, grouped
from auditor.report.terminal import printable

_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def render(report: Report) -> str:
    lines = []
    for result in report.results:
        if result.status == "error":
            lines.append(f"::error title=audit::{_data(f'{result.target}: {result.error}')}")
        elif result.status == "skipped":
            lines.append(f"::notice title={_property('audit: not audited')}::{_data(f'{result.target}: {result.reason}')}")
        elif result.capture is not None and result.capture.stopped:
            lines.append(f"::warning title=audit::{_data(f'{result.target}: {result.capture.stopped}')}")
        lines.extend(_annotation(group) for group in grouped(result.findings))
    return "\n".join(lines)


def _annotation(group: Group) -> str:
    finding = group.first
    properties = []
    if finding.file:
        properties.append(f"file={_property(finding.file)}")
        if finding.line:
            properties.append(f"line={finding.line}")
    properties.append(f"title={_property(f'{finding.code} {finding.rule}')}")
    module = f" [{finding.module or '<root>'}]" if finding.module is not None else ""
    also = f" ({group.others_text()})" if group.others else ""
    return f"::{_COMMAND[finding.severity]} {','.join(properties)}::{_data(finding.message + module + also)}"


def _data(text: str) -> str:
    """Workflow-command data: %, CR and LF encoded as GitHub decodes them; other controls (an escape sequence
    in a module name) shown escaped, as in the text report."""
    return printable(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
