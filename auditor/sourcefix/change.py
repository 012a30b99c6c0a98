"""A planned change to one file (the operations, and what they do to the model's module tree), and the record
`--fix` keeps of it: shared by the model edits (`context.py`, child) and the training-script edits (`script.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from auditor.findings import Finding
from auditor.sourcefix import ops as O
from auditor.sourcefix.source import SourceFile


class NoEdit(Exception):
    """The finding has no edit in the source (the message says why); `--fix --out DIR` may still fix it."""


@dataclass
class Change:
    """Operations on one file, and what they do to the model's module tree."""

    path: str
    ops: list[O.Op | O.EnsureImport] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # module qualified names, old -> new
    added: list[str] = field(default_factory=list)  # modules whose parameters are new
    dropped: list[str] = field(default_factory=list)  # parameter names that go away


def record(finding: Finding, change: Change, action: str, safe: bool, target: str = "") -> O.SourceEdit:
    """The record of the edit that fixes `finding`. `safe`: the model (or script) computes the same after it."""
    return O.SourceEdit(
        path=change.path, ops=tuple(dict.fromkeys(change.ops)), code=finding.code, module=finding.module, finding_key=finding.key,
        finding_text=O.without_numbers(finding.message),
        file=finding.file, line=finding.line, action=action, safe=safe, renamed=tuple(sorted(change.renamed.items())),
        added=tuple(change.added), dropped=tuple(change.dropped), target=target, digest=SourceFile.read(change.path).digest,
    )
