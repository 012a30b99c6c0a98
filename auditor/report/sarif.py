"""`--format sarif`: SARIF 2.1.0 as GitHub code scanning accepts it, with every rule's documentation.

The document is valid Unicode whatever the user named things: artifact URIs are percent-encoded (a file name that
is not UTF-8, `m\xff.py`, becomes `m%FF.py`) and user text in messages is shown as the text report shows it
(`auditor.report.terminal.printable`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from auditor import __version__
from auditor.baseline import fingerprint, portable
from auditor.findings import Finding, Report, Severity
from auditor.report.terminal import printable
from auditor.rule import Rule, all_rules

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
FINGERPRINT_KEY = "auditorFingerprint/v1"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def document(report: Report) -> dict[str, Any]:
    rules = all_rules()
    index = {rule.code: i for i, rule in enumerate(rules)}
    results = [_result(f, index, r.target) for r in report.results for f in r.findings]
    notifications = [
        {"level": "error", "message": {"text": printable(f"{r.target}: {r.error}")}} for r in report.results if r.status == "error"
    ]
    skipped = [  # found but not audited: a note, not a failure of the run
        {"level": "note", "message": {"text": printable(f"{r.target}: not audited: {r.reason}")}} for r in report.skipped
    ]
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "auditor", "version": __version__, "informationUri": "https://github.com/auditor-dev/auditor", "rules": [_descriptor(r) for r in rules]}},
                "invocations": [{"executionSuccessful": not notifications, "toolExecutionNotifications": notifications + skipped}],
                "results": results,
            }
        ],
    }


def render(report: Report) -> str:
    return json.dumps(document(report), indent=2)


def _descriptor(rule: Rule) -> dict[str, Any]:
    doc = rule.doc_sections()
    full = doc.get("What it does", rule.summary)
    help_text = "\n\n".join(f"## {title}\n{body}" for title, body in doc.items())
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": full},
        "help": {"text": help_text or rule.summary, "markdown": help_text or rule.summary},
        "defaultConfiguration": {"level": _LEVEL[rule.severity]},
        "properties": {"tags": [rule.scope], "fixable": rule.fixable},
    }


def _result(finding: Finding, index: dict[str, int], target: str) -> dict[str, Any]:
    file = finding.file or _file_of(target)
    location: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": _uri(file), "uriBaseId": "%SRCROOT%"}, "region": {"startLine": finding.line or 1}}}
    if finding.module is not None:
        location["logicalLocations"] = [{"fullyQualifiedName": printable(finding.module or "<root>"), "kind": "module"}]
    result: dict[str, Any] = {
        "ruleId": finding.code,
        "level": _LEVEL[finding.severity],
        "message": {"text": printable(finding.message)},
        "locations": [location],
        # the baseline's fingerprint, with the target relative to the working directory (as artifact URIs are)
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(finding, portable(target, Path.cwd()))},
    }
    if finding.code in index:
        result["ruleIndex"] = index[finding.code]
    return result


def _uri(path: str) -> str:
    """A relative path as a URI reference (RFC 3986): the bytes of its name percent-encoded where a URI needs it,
    so a name that is not UTF-8 (`m\udcff.py`, a surrogate escape) becomes `m%FF.py`."""
    return quote(os.fsencode(path), safe="/")


def _file_of(target: str) -> str:
    """Findings without a line of their own are shown on the target's file (GitHub needs a location)."""
    return target.split(":", 1)[0]
