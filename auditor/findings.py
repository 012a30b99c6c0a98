"""The records every part of the tool exchanges: severities, findings, per-target results, the report.

Plain data with no torch import, so reporters, config and the CLI stay cheap to load.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auditor.baseline import Outcome


class Severity(enum.IntEnum):
    """Ordered so that `finding.severity >= fail_on` reads naturally."""

    INFO = 1
    WARNING = 2
    ERROR = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r} (expected error, warning or info)") from None


@dataclass(frozen=True)
class Finding:
    """One problem at one place: the JSON `findings[]` record of the contract."""

    code: str
    rule: str
    severity: Severity
    message: str
    module: str | None = None
    node: str | None = None
    file: str | None = None
    line: int | None = None
    fixable: bool = False
    hint: str | None = None  # the imperative fix title shown to people; not part of the JSON record
    unsafe_fix: bool = False  # its fix in the user's file changes what the model computes (--unsafe-fixes); people's formats only
    key: str | None = None  # what tells it apart from the rule's other findings in one module (baseline fingerprints)
    # Findings of one rule along one chain of layers share a group: people's formats show them as one finding
    # naming the layers. Not part of the JSON record (JSON and SARIF keep every finding).
    group: str | None = None
    # For a module the forward calls more than once: the forward line of the call concerned ("net.py:21"), also
    # named in the message; people's formats keep its findings apart from the module's other calls.
    call: str | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("hint")
        record.pop("key")
        record.pop("group")
        record.pop("call")
        record.pop("unsafe_fix")
        record["severity"] = str(self.severity)
        return record


@dataclass(frozen=True)
class AppliedFix:
    """One rewrite `--fix` made (JSON `fixes[]`)."""

    code: str
    module: str | None
    action: str
    safe: bool = False  # True when the rewrite provably keeps the model's outputs
    file: str | None = None  # an edit of the user's source: the file and the line of the finding it fixes
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"code": self.code, "module": self.module, "action": self.action, "safe": self.safe}
        if self.file is not None:
            record["file"], record["line"] = self.file, self.line
        return record


GUESS_NOTE = "guess: "  # starts the notes about what a guessed input decided (shown with the guess, without -v)


@dataclass(frozen=True)
class InputRecord:
    """One forward argument the model was audited with (JSON `capture.inputs[]`). `spec` is in --input's
    grammar (`int64:2,32`, a plain value `=0`; "None" for an optional argument left at None); `source` says where it came from:
    `--input`, `example_inputs()`, `example_input_array`, `the caller's inputs`, or, for a guess, what it was
    read from (`from Embedding(1000, 64) and pos_emb[32]`)."""

    name: str
    spec: str
    source: str
    guessed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "guessed": self.guessed, "source": self.source}


@dataclass(frozen=True)
class ClassRecord:
    """A class the user's repository defines, where it is defined (JSON `capture.classes[]`)."""

    name: str
    file: str  # as results name files; a notebook's class: `nb.ipynb:cell 3`
    line: int

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the class across results: its file (a notebook without the cell) and name."""
        return self.file.split(":cell ", 1)[0], self.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "line": self.line}


@dataclass
class CaptureInfo:
    method: str  # "fx", "export" or "hooks"
    nodes: int
    notes: list[str] = field(default_factory=list)
    stopped: str | None = None  # a partial graph: the note saying where the forward pass stopped (one of `notes`)
    inputs: list[InputRecord] = field(default_factory=list)  # what the forward was fed, argument by argument
    classes: list[ClassRecord] = field(default_factory=list)  # the user classes the model holds, its own class first

    @property
    def guessed(self) -> bool:
        """Whether the inputs were guessed (inferred from the model) rather than given."""
        return any(record.guessed for record in self.inputs)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "nodes": self.nodes, "notes": list(self.notes), "inputs": [i.to_json() for i in self.inputs],
                "classes": [c.to_json() for c in self.classes]}


@dataclass
class TargetResult:
    """The outcome for one audited thing: a model, or a source file's static checks."""

    target: str
    status: str = "ok"  # "ok", "error", or "skipped" (found but not audited: `reason` says why and how to audit it)
    error: str | None = None
    reason: str | None = None  # for "skipped": why, and the command or config that audits it
    capture: CaptureInfo | None = None
    findings: list[Finding] = field(default_factory=list)
    fixes: list[AppliedFix] = field(default_factory=list)
    fixed_path: str | None = None
    probes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    traceback: str | None = None  # with --verbose, for a failed target
    fix_diff: str | None = None  # --fix --diff: unified diff of the generated code before/after (text output only)
    built: str | None = None  # how the model was built: "built as in train.py:41", "built with guessed arguments: ..."
    model_class: ClassRecord | None = None  # the user class the result stands for (audited, skipped or failed)
    planned: Any = None  # --fix in place: the source edits planned for it (auditor.sourcefix.ops.Planned)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"target": self.target, "status": self.status}
        if self.error is not None:
            record["error"] = self.error
        if self.reason is not None:
            record["reason"] = self.reason
        if self.built is not None:
            record["built"] = self.built
        if self.model_class is not None:
            record["class"] = self.model_class.to_json()
        record["capture"] = self.capture.to_json() if self.capture else None
        record["findings"] = [f.to_json() for f in self.findings]
        record["fixes"] = [f.to_json() for f in self.fixes]
        if self.fixed_path is not None:
            record["fixed_path"] = self.fixed_path
        record["probes"] = self.probes
        return record


@dataclass
class Report:
    """Everything one `audit` run found, in target order."""

    results: list[TargetResult] = field(default_factory=list)
    baseline: Outcome | None = None  # with --baseline: what it hid, which entries are stale
    edited: Any = None  # --fix in place / --diff: what was changed in the user's files (auditor.sourcefix.session.Edited)

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings]

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def failed_targets(self) -> list[TargetResult]:
        return [r for r in self.results if r.status == "error"]

    @property
    def skipped(self) -> list[TargetResult]:
        """Models found but not audited; they never count as passed, and never change the exit code."""
        return [r for r in self.results if r.status == "skipped" and names_member(r.target)]

    @property
    def files_not_read(self) -> list[TargetResult]:
        """Whole files not imported (a script that defines no model, a notebook without nbformat): not models."""
        return [r for r in self.results if r.status == "skipped" and not names_member(r.target)]

    def classes(self) -> dict[str, int]:
        """Every user class the results name, once: audited as a model, covered inside one, or not audited."""
        ok = [r for r in self.results if r.status == "ok" and r.capture is not None]
        audited = {r.model_class.key for r in ok if r.model_class is not None}
        covered = {c.key for r in ok for c in r.capture.classes} - audited  # type: ignore[union-attr]
        named = {r.model_class.key for r in self.results if r.status in ("skipped", "error") and r.model_class is not None}
        not_audited = named - audited - covered
        return {"defined": len(audited | covered | not_audited), "audited": len(audited), "covered": len(covered), "not_audited": len(not_audited)}

    @property
    def models_audited(self) -> int:
        """Results that captured a graph (the others are source-file checks, failures and skips)."""
        return sum(1 for r in self.results if r.status == "ok" and r.capture is not None)

    def exit_code(self, fail_on: Severity) -> int:
        if self.failed_targets:
            return 2
        return 1 if any(f.severity >= fail_on for f in self.findings) else 0

    def summary(self) -> dict[str, Any]:
        return {
            "targets": sum(1 for r in self.results if r.status != "skipped"),
            "error": self.count(Severity.ERROR),
            "warning": self.count(Severity.WARNING),
            "info": self.count(Severity.INFO),
            "skipped": len(self.skipped),
            "classes": self.classes(),
        }


def names_member(target: str) -> bool:
    """`models/net.py:Net` names one model; `train.py` a whole file."""
    return ":" in target.replace("\\", "/").rsplit("/", 1)[-1]


def settle_provisional(results: list[TargetResult]) -> list[TargetResult]:
    """Drop the skipped records of classes that a model audited elsewhere in the run covers (a building block
    of `layers.py` that `net.py:Net` holds): the child auditing `layers.py` cannot know, the run can."""
    covered = {c.key for r in results if r.status == "ok" and r.capture is not None for c in r.capture.classes}
    return [r for r in results if not (r.status == "skipped" and r.model_class is not None and r.model_class.key in covered)]
