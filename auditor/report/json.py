"""`--format json`: the contract's document, exactly."""

from __future__ import annotations

import json

from auditor import __version__
from auditor.findings import Report


def document(report: Report) -> dict:
    record = {
        "version": 1,
        "tool": {"name": "auditor", "version": __version__},
        "results": [r.to_json() for r in report.results],
        "summary": report.summary(),
    }
    if report.baseline is not None:  # --baseline: how many findings it hid, which entries are stale
        record["baseline"] = report.baseline.to_json()
    return record


def render(report: Report) -> str:
    return json.dumps(document(report), indent=2, default=jsonable)


def jsonable(value: object) -> object:
    """Probe numbers may be tensors or numpy scalars; JSON wants plain numbers."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)
