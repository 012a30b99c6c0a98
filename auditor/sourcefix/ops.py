"""The edits `--fix` makes to the user's own files, as plain records.

A rule's `source_fix` describes its change with these operations, anchored at nodes of the file's concrete syntax
tree (LibCST) by their position; the child process that holds the model makes them, the `audit` process applies
them (`auditor.sourcefix.apply`, one pass per file) and checks them by auditing the edited files again. Records
only: no torch, no LibCST, so they cross the process boundary and compare by value (two models built from one
class plan the same edit once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

HOLE = "__audit_value__"  # where a `Wrap` template puts the expression it wraps


@dataclass(frozen=True)
class Span:
    """A node of the file's syntax tree: where it starts and ends (1-based lines, 0-based columns) and its class."""

    line: int
    column: int
    end_line: int
    end_column: int
    kind: str  # LibCST class name: "Call", "List", "SimpleStatementLine", ...


@dataclass(frozen=True)
class Op:
    at: Span


@dataclass(frozen=True)
class MoveElement(Op):
    """In a call's positional arguments or a list/tuple literal (`at`), move element `index` to right after
    (`after`) or right before element `anchor` (indices as in the original). Trailing comments go along."""

    index: int
    anchor: int
    after: bool = True


@dataclass(frozen=True)
class InsertElement(Op):
    """Insert `code` as an element of the call's arguments or the literal `at`, before original element `index`."""

    index: int
    code: str


@dataclass(frozen=True)
class RemoveElement(Op):
    index: int


@dataclass(frozen=True)
class Replace(Op):
    """Replace an expression, or a statement, with `code`."""

    code: str


@dataclass(frozen=True)
class Unwrap(Op):
    """Replace a call with one of its inputs: positional argument `slot`, or the receiver of a method call (-1).
    `parenthesize`: the input is not atomic and its new place binds tighter (an operand, a receiver)."""

    slot: int
    parenthesize: bool = False


@dataclass(frozen=True)
class Wrap(Op):
    """Replace an expression E with `template`, whose `HOLE` name stands for E (after E's own edits)."""

    template: str


@dataclass(frozen=True)
class SetArgument(Op):
    """Give a call the keyword argument `keyword=code`: replacing it, or the positional argument at `position`
    when the call passes it positionally, else adding it."""

    keyword: str
    code: str
    position: int | None = None


@dataclass(frozen=True)
class RemoveStatement(Op):
    pass


@dataclass(frozen=True)
class InsertStatements(Op):
    """Insert the statements `code` (written at no indentation) before or after the statement `at`."""

    code: str
    after: bool = False


@dataclass(frozen=True)
class MoveStatement(Op):
    """Move the statement `at` to right after (or before) the statement `anchor` of the same block."""

    anchor: Span
    after: bool = True


@dataclass(frozen=True)
class EnsureImport:
    """`import torch.nn.functional as F` at the top of the file, unless it is there (`at` has no meaning)."""

    statement: str


@dataclass(frozen=True)
class SourceEdit:
    """The edit that fixes one finding in one file: what to change, what it does, and what it does to the model
    (module renames and additions the parameter-name check allows; the model's own qualified names)."""

    path: str  # the file, absolute
    ops: tuple[Op | EnsureImport, ...]
    code: str  # the finding's rule
    module: str | None  # the finding's module
    finding_key: str | None  # the finding's own key (a functional op's: what it reads); with code and module, its identity
    finding_text: str  # its message without numbers: a finding that changes (a dropout that now reaches another norm) is another one
    file: str | None  # where the finding points, as reported
    line: int | None
    action: str  # "Dropout -> Tanh => Tanh -> Dropout"
    safe: bool  # the model (or script) computes the same: applied without --unsafe-fixes
    renamed: tuple[tuple[str, str], ...] = ()  # (old, new) module qualified names
    added: tuple[str, ...] = ()  # module qualified names whose parameters are new
    dropped: tuple[str, ...] = ()  # parameter names that go away (a bias)
    target: str = ""  # the result that planned it (the model's label)
    digest: str = ""  # of the file's bytes it was planned on: a file changed since is not edited

    @property
    def identity(self) -> tuple[str, str, str | None, str | None, str]:
        """The finding it fixes, in the model that planned it: each is tried once per run."""
        return self.target, self.code, self.module, self.finding_key, self.finding_text

    @property
    def finding(self) -> str:
        return f"{self.code} [{'<root>' if self.module == '' else self.module or self.file}]"

    @property
    def key(self) -> tuple[str, tuple[Op | EnsureImport, ...]]:
        """Two findings fixed by the same change (every instance of one class) share it."""
        return self.path, self.ops


def without_numbers(message: str) -> str:
    """A finding's message as its identity: measured values and indices vary, what it says does not."""
    import re

    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", message)


@dataclass
class Planned:
    """What a model's (or a file's) audit planned for `--fix` in place: the edits, why other findings have none,
    and the model's parameter names (the check after the edit compares them)."""

    edits: list[SourceEdit] = field(default_factory=list)
    unfixed: list[str] = field(default_factory=list)  # "CODE [module]: why it has no edit in the source"
    parameters: tuple[str, ...] | None = None
