"""The fix loop: every fixable finding applied to a copy of the model, in passes over one captured graph.

1. The copy shares the user's tensors (`Workspace`); fx captures trace it once into a GraphModule that keeps the
   user's module tree (`layout.mirror`) and follows `self.training` at run time (`modes`).
2. A pass runs the graph rules once and applies each fixable finding's `rule.fix(ctx, finding)` against that
   one graph. Fixes that keep outputs (`fix_safe`) go first and are verified together on the example inputs
   (undone if the outputs changed). A fix that read a node an earlier fix of the same pass changed is undone and
   waits for the next pass, as does one a rewrite made stale; the graph is linted and recompiled once per pass.
3. After a pass that changed something the copy is captured again (one forward pass): that shows what the next
   pass reads (deferred fixes, findings a fix exposed, as NRM002 once NRM001 put a BatchNorm after a biased
   conv), and a fix after which the forward fails is undone. Passes end when nothing new can be tried: each
   finding (rule, node, cause) is tried once. Independent fixes all go in the first pass, so the number of
   passes follows how fixes depend on each other, not how many there are; `MAX_PASSES` only stops a chain of
   fixes that keeps exposing new findings, and says so.
Undoing a fix replays its journal: the graph edits and the tensors it wrote, never a copy of the model.

A model built without its weights (on meta) goes through the same passes: its forward passes carry shapes only,
its re-inits are planned (`initplan.py`) and read back by the rules through the plan, and output-keeping fixes
cannot be verified (there are no outputs to compare), so they are listed as changing behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch.fx as fx
import torch.nn as nn

from auditor.errors import first_line
from auditor.findings import AppliedFix, Finding
from auditor.fixing import rewrite
from auditor.fixing.context import FixContext
from auditor.fixing.initplan import InitPlan
from auditor.fixing.layout import align_sequentials, mirrored
from auditor.fixing.modes import restore_training_flags
from auditor.fixing.plan import reasons
from auditor.fixing.rewrite import CannotFix, Stale
from auditor.fixing.verify import FixFailure, outputs_match, try_outputs
from auditor.fixing.workspace import Workspace
from auditor.graph import AuditGraph
from auditor.options import FixOptions, Options

MAX_PASSES = 64
FindingsOf = Callable[[AuditGraph, Any], list[Finding]]  # the engine's graph rules (graph, inits), fixability judged
Key = tuple[str, "str | None", str]  # (code, node, message): one finding, across passes


@dataclass
class Fixed:
    """The outcome of fixing one model in memory."""

    model: nn.Module  # the fixed copy (a GraphModule for fx captures)
    method: str  # the capture method used
    workspace: Workspace
    fixes: list[AppliedFix] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Applied:
    finding: Finding
    fix: AppliedFix
    start: int  # its steps in the journal: [start, end)
    end: int


class FixSession:
    """One model's fix loop. `start()` makes the copy and its first capture; `run()` applies the fixes."""

    def __init__(self, source: nn.Module, sites: dict[str, Any], inputs: tuple[Any, ...], method: str,
                 options: Options, findings_of: FindingsOf, weights: Any = None) -> None:
        self.source, self.sites, self.inputs, self.method = source, sites, inputs, method
        self.weights = weights  # the model's `Weights` (loading/meta.py): on meta, inits are planned
        self.options = options
        self.fix_options = options.fix or FixOptions(out=None)
        self.findings_of = findings_of
        self.notes: list[str] = []
        self.applied: list[_Applied] = []
        self.tried: set[Key] = set()
        self.bypassed: list[fx.Node] = []
        self.workspace: Workspace | None = None
        self.graph: AuditGraph | None = None
        self.passes = 0

    # --- the copy and its captures ----------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.workspace = Workspace.of(self.source)
        except Exception as exc:  # noqa: BLE001 - a model holding something that cannot be copied
            raise FixFailure(f"the model cannot be copied ({type(exc).__name__}: {first_line(exc)}); nothing was changed") from exc
        if self.without_weights:
            self.workspace.inits = InitPlan(self.weights.inits, self.workspace.journal)
        try:
            self.graph = self._first_capture()
        except Exception as exc:  # noqa: BLE001
            raise FixFailure(f"the copy could not be captured with {self.method}: {first_line(exc)}") from exc

    @property
    def model(self) -> nn.Module:
        assert self.workspace is not None
        return self.workspace.model

    @property
    def without_weights(self) -> bool:
        return self.weights is not None and self.weights.on_meta

    def _first_capture(self) -> AuditGraph:
        from auditor.capture import capture, eval_mode, quiet_torch
        from auditor.capture.fx import trace

        assert self.workspace is not None
        copy = self.workspace.model
        if self.method != "fx":
            return capture(copy, self.inputs, self.sites, (self.method,))
        with eval_mode(copy), quiet_torch():
            gm = mirrored(trace(copy, len(self.inputs)), copy)  # in eval mode, as the audit traced it
        restore_training_flags(gm, copy, self.notes, len(self.inputs))
        rewrite.finish(gm)
        self.workspace.model = gm
        return self._capture_traced()

    def _capture_traced(self) -> AuditGraph:
        """The graph of the GraphModule being rewritten, read again without tracing (every node keeps its
        owning module and user line)."""
        from auditor.capture import eval_mode, quiet_torch
        from auditor.capture.fx import capture_traced

        assert isinstance(self.model, fx.GraphModule)
        with eval_mode(self.model), quiet_torch():
            return capture_traced(self.model, self.inputs, self.sites)

    def _recapture(self, applied_now: list[_Applied]) -> AuditGraph:
        """A new capture after a pass; a fix after which the forward fails (or stops short, past a merge still
        stepped over) is undone, the latest of the fixes upstream of where it failed first, until it does not."""
        from auditor.capture import capture
        from auditor.capture.forward import ForwardFailure

        while True:
            if not isinstance(self.model, fx.GraphModule):
                return capture(self.model, self.inputs, self.sites, (self.method,))
            rewrite.finish(self.model)
            try:
                graph = self._capture_traced()
                failing, why = _stop(self.model, graph), graph.stopped
            except ForwardFailure as failure:
                graph, why = None, first_line(failure.cause)
                failing = next((n for n in self.model.graph.nodes if n.name == failure.node), None)
            culprit = self._culprit(failing, applied_now) if failing is not None else None
            if culprit is None:
                if graph is None:
                    raise FixFailure(f"the fixed copy could not be captured with {self.method}: {why}")
                return graph
            applied_now.remove(culprit)
            self._undo(culprit, f"the model failed after it ({why})")

    def _culprit(self, failing: fx.Node, candidates: list[_Applied]) -> _Applied | None:
        """The latest fix of the pass that touched the failing node or what it reads."""
        assert self.workspace is not None
        upstream = {failing} | rewrite.ancestors(failing)
        for applied in reversed(candidates):
            if self.workspace.journal.touched(applied.start, applied.end) & upstream:
                return applied
        return None

    # --- passes -----------------------------------------------------------------------------------------------
    def run(self) -> Fixed:
        """Passes until nothing new can be tried; then the bypassed nodes are erased and containers ordered."""
        assert self.graph is not None and self.workspace is not None
        graph = self.graph
        while True:
            todo = self._todo(graph)
            if not todo:
                break
            if self.passes == MAX_PASSES:
                self.notes.append(f"stopped after {MAX_PASSES} passes: each pass's fixes exposed new findings; "
                                  f"{len(todo)} finding(s) were not tried (run --fix again on the result)")
                break
            self.passes += 1
            applied_now = self._pass(graph, todo)
            if not applied_now:
                break
            graph = self._recapture(applied_now)
        self._finalize()
        return Fixed(model=self.model, method=self.method, workspace=self.workspace,
                     fixes=[a.fix for a in self.applied], notes=self.notes)

    def _todo(self, graph: AuditGraph) -> list[tuple[Any, Finding]]:
        """The findings not tried yet whose fix applies; the others get a note saying why not (once)."""
        from auditor.rule import find_rule

        todo = []
        inits = self.workspace.inits if self.workspace is not None else None
        findings = [f for f in self.findings_of(graph, inits) if _key(f) not in self.tried]
        for finding, reason in zip(findings, reasons(graph, findings, self.fix_options)):
            rule = find_rule(finding.code)
            if rule is None or getattr(rule, "fix", None) is None:
                continue
            if reason is not None:
                self.tried.add(_key(finding))
                self.notes.append(f"{_where(finding)}: not fixed: {reason}")
                continue
            todo.append((rule, finding))
        return todo

    def _pass(self, graph: AuditGraph, todo: list[tuple[Any, Finding]]) -> list[_Applied]:
        """One pass over `graph`: the safe fixes (verified together), then the others. Returns what was applied."""
        ctx = FixContext(graph=graph, shortcut=self.fix_options.shortcut, skip_concat=self.fix_options.skip_concat, settings=self.options.settings,
                         workspace=self.workspace, inputs=self.inputs, seed=self.fix_options.seed, bypassed=self.bypassed)
        dirty: set[fx.Node] = set()
        applied: list[_Applied] = []
        deferred: list[Finding] = []
        verifiable = not self.without_weights  # on meta there are no outputs to compare
        safe = [(r, f) for r, f in todo if getattr(r, "fix_safe", False) and verifiable]
        others = [(r, f) for r, f in todo if not getattr(r, "fix_safe", False) or not verifiable]
        if safe:
            reference = try_outputs(self.model, self.inputs)
            if reference is None:  # the model does not run yet: verify them in a later pass
                deferred.extend(f for _, f in safe)
            else:
                applied += self._safe_group(ctx, safe, reference, dirty, deferred)
        for rule, finding in others:
            done = self._attempt(ctx, rule, finding, dirty, deferred)
            if done is not None:
                if done.fix.safe:
                    if verifiable:
                        self.notes.append(f"{_where(finding)}: claims to keep outputs but was not verified: listed as changing behaviour")
                    done.fix = replace(done.fix, safe=False)
                applied.append(done)
        self.applied += applied
        if not applied:
            for finding in deferred:
                self.tried.add(_key(finding))
                why = ("it must keep the outputs, which cannot be checked while the model fails on the example inputs"
                       if getattr(_rule(finding), "fix_safe", False) else "the graph changed around it; run --fix again on the result")
                self.notes.append(f"{_where(finding)}: not fixed: {why}")
        return applied

    def _safe_group(self, ctx: FixContext, safe: list[tuple[Any, Finding]], reference: list[Any],
                    dirty: set[fx.Node], deferred: list[Finding]) -> list[_Applied]:
        assert self.workspace is not None
        start = self.workspace.journal.mark()
        group = [done for rule, finding in safe if (done := self._attempt(ctx, rule, finding, dirty, deferred)) is not None]
        if not group:
            return []
        equal, delta = outputs_match(reference, try_outputs(self.model, self.inputs) or [])
        if not equal:
            self.workspace.journal.undo(start)
            for done in group:
                self.notes.append(f"{_where(done.finding)}: fix reverted: it changed the outputs (max |diff| {delta:.2g})")
            return []
        codes = ", ".join(sorted({d.fix.code for d in group}))
        self.notes.append(f"{codes}: outputs verified unchanged on the example inputs (eval mode, max |diff| {delta:.2g})")
        for done in group:
            done.fix = replace(done.fix, safe=True)
        return group

    def _attempt(self, ctx: FixContext, rule: Any, finding: Finding, dirty: set[fx.Node], deferred: list[Finding]) -> _Applied | None:
        """Apply one fix. It is undone and deferred to the next pass when it read what an earlier fix of this
        pass changed; undone and noted when it cannot apply."""
        assert self.workspace is not None
        journal = self.workspace.journal
        start = journal.mark()
        ctx.read = set()
        ctx.stale_after = []
        ctx.finding = finding
        try:
            applied = rule.fix(ctx, finding)
            problem: BaseException | None = None if applied is not None else CannotFix("the fix does not apply here")
        except CannotFix as exc:
            problem, applied = exc, None
        except Exception as exc:  # noqa: BLE001 - a bug in one fix must not stop the others
            if self.options.verbose:
                raise
            problem, applied = exc, None
        if ctx.read & dirty or isinstance(problem, Stale):
            journal.undo(start)
            deferred.append(finding)
            return None
        self.tried.add(_key(finding))
        if problem is not None:
            journal.undo(start)
            reason = str(problem) if isinstance(problem, CannotFix) else (
                f"the fix failed internally ({type(problem).__name__}: {first_line(problem)})")
            self.notes.append(f"{_where(finding)}: not fixed: {reason}")
            return None
        end = journal.mark()
        changed = journal.touched(start, end)
        for node in changed:
            dirty.update((node, *node.all_input_nodes, *node.users))
        for node in ctx.stale_after:
            dirty.update(_descendants(node))
        assert applied is not None
        return _Applied(finding, applied, start, end)

    def _undo(self, applied: _Applied, why: str) -> None:
        assert self.workspace is not None
        self.workspace.journal.undo(applied.start, applied.end)
        self.applied.remove(applied)
        self.notes.append(f"{_where(applied.finding)}: fix reverted: {why}")

    def _finalize(self) -> None:
        """Erase what the fixes took out of the dataflow, drop modules nothing calls any more, and order each
        nn.Sequential as the fixed forward calls its children."""
        gm = self.model
        if not isinstance(gm, fx.GraphModule):
            return
        for name in rewrite.erase_unused(gm, self.bypassed):
            gm.delete_submodule(name)
        rewrite.finish(gm)
        self.notes.extend(align_sequentials(gm))


def _stop(gm: fx.GraphModule, graph: AuditGraph) -> fx.Node | None:
    """Where a partial capture stopped: the first node of the GraphModule its graph does not have."""
    if graph.stopped is None:
        return None
    captured = {id(n.meta.get("fx_node")) for n in graph.nodes}
    return next((n for n in gm.graph.nodes if id(n) not in captured and n.op != "output"), None)


def _key(finding: Finding) -> Key:
    """A finding tried once: the same rule at the same node for the same cause. After a fix the same node may
    show a new cause (a dropout moved after one BatchNorm that still reaches the next one): that is tried too."""
    return (finding.code, finding.node, finding.message)


def _descendants(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.users)
    return seen


def _rule(finding: Finding) -> Any:
    from auditor.rule import find_rule

    return find_rule(finding.code)


def _where(item: Finding | AppliedFix) -> str:
    """`DRO001 [head.drop]` in notes (`<root>` for the model's own forward)."""
    module = "<root>" if item.module == "" else (item.module or "-")
    return f"{item.code} [{module}]"
