"""What a source rule's `source_fix(ctx, finding)` sees: the file it checked (no model, no torch: this runs in the
`audit` process), with primitives for training-script edits."""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from typing import Any, Iterable, NoReturn

import libcst as cst

from auditor.findings import Finding
from auditor.sourcefix import ops as O
from auditor.sourcefix.change import Change, NoEdit, record
from auditor.sourcefix.source import SourceFile, Unreadable, first_argument


@dataclass
class ScriptContext:
    path: str
    settings: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)  # what the rules' helpers list once per file, as SourceContext's

    @property
    def file(self) -> SourceFile:
        try:
            return SourceFile.read(self.path)
        except Unreadable as exc:
            self.cannot(str(exc))

    @functools.cached_property
    def tree(self) -> ast.Module:
        """The file as the source rules read it."""
        return ast.parse(self.file.data)

    def cannot(self, reason: str) -> NoReturn:
        raise NoEdit(reason)

    def call_at(self, line: int, names: Iterable[str]) -> cst.Call:
        """The one call named one of `names` (`clip_grad_norm_`, `CrossEntropyLoss`) on `line`."""
        wanted = set(names)
        calls = self.file.calls_named(line, wanted)
        if len(calls) != 1:
            self.cannot(f"{'no' if not calls else 'more than one'} call of {' or '.join(sorted(wanted))} on line {line}")
        return calls[0]

    def statement(self, call: cst.Call) -> cst.BaseStatement:
        statement = self.file.statement(call)
        if statement is None:
            self.cannot(f"`{self.file.code(call)}` is not in a statement of a block")
        return statement

    # --- primitives ---------------------------------------------------------------------------------------------------
    def insert_before(self, call: cst.Call, code: str) -> Change:
        """Statements right before the statement holding `call`."""
        return Change(self.path, [O.InsertStatements(self.file.span(self.statement(call)), code)])

    def set_argument(self, call: cst.Call, keyword: str, code: str, position: int | None = None) -> Change:
        """`keyword=code` on `call` (replacing it, or the positional argument at `position`)."""
        return Change(self.path, [O.SetArgument(self.file.span(call), keyword, code, position)])

    def warm_up(self, call: cst.Call, total: str | None) -> Change:
        """A linear warm-up before the schedule `call` creates: `LinearLR(start_factor=0.01)` over 5% of `total`
        steps (5 steps without one), then the schedule, in a `SequentialLR` assigned where the schedule was."""
        file = self.file
        statement = self.statement(call)
        small = file.small_statement(call)
        if not isinstance(small, cst.Assign) or small.value is not call or len(statement.body) != 1:
            self.cannot(f"`{file.code(call)}` is not assigned on a line of its own")
        optimizer = first_argument(call, "optimizer")
        if optimizer is None:
            self.cannot(f"`{file.code(call)}` names no optimizer")
        scope = file.function(call) or file.module
        steps, warmup = file.fresh_name(scope, "warmup_steps"), file.fresh_name(scope, "warmup")
        schedulers, missing = file.reachable("torch.optim.lr_scheduler")
        length = f"max(1, {total} // 20)" if total is not None else "5"
        opt = file.code(optimizer.value)
        code = (f"{steps} = {length}\n{warmup} = {schedulers}.LinearLR({opt}, start_factor=0.01, total_iters={steps})\n")
        change = Change(self.path, [O.InsertStatements(file.span(statement), code)] + ([O.EnsureImport(missing)] if missing else []))
        change.ops.append(O.Wrap(file.span(call), f"{schedulers}.SequentialLR({opt}, [{warmup}, {O.HOLE}], milestones=[{steps}])"))
        return change

    def edited(self, finding: Finding, change: Change, action: str, *, safe: bool) -> O.SourceEdit:
        return record(finding, change, action, safe)
