"""What a source rule's `source_fix(ctx, finding)` sees: the file it checked (no model, no torch: this runs in the
`audit` process), with primitives for training-script edits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

from auditor.findings import Finding
from auditor.sourcefix import ops as O
from auditor.sourcefix.change import Change, NoEdit, record
from auditor.sourcefix.source import SourceFile, Unreadable


@dataclass
class ScriptContext:
    path: str
    settings: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def file(self) -> SourceFile:
        try:
            return SourceFile.read(self.path)
        except Unreadable as exc:
            self.cannot(str(exc))

    def cannot(self, reason: str) -> NoReturn:
        raise NoEdit(reason)

    def edited(self, finding: Finding, change: Change, action: str, *, safe: bool) -> O.SourceEdit:
        return record(finding, change, action, safe)
