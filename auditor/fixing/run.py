"""`--fix` for one model: fix a deep copy in rounds, write it, load what was written, run it, re-audit it.

1. The user's model is deep-copied; nothing is shared with it (the user's object and files are never touched).
2. Rounds, as ruff iterates its fixes: capture the copy with the method the audit used, run the graph rules,
   and apply each fixable finding's `rule.fix(ctx, finding)`. A graph rewrite ends the round (the next capture
   sees the rewritten graph and its new shapes); module-level fixes (re-inits, bias folding) go on. Fixes that
   keep outputs (`safe`) run first and are verified on the example inputs in eval mode; if outputs changed,
   they are reverted. A capture that fails after a rewrite reverts that round.
3. The copy is written (`writer`): generated code for fx captures, the user's code plus fixed weights otherwise.
4. The written folder is loaded as `audit DIR` would, run on the example inputs (it must reproduce the fixed
   copy), and re-audited with the same options; what remains is reported against the user's locations.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import operator
import sys
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.fx as fx
import torch.nn as nn

from auditor.errors import TargetError, first_line
from auditor.findings import AppliedFix, Finding, TargetResult
from auditor.fixing.context import FixContext
from auditor.fixing.rewrite import CannotFix, Stale, finish, get_training_flag
from auditor.fixing.writer import FolderContents, OutputFolder, save_inputs, save_tensors, write_fixes, write_manifest
from auditor.graph import AuditGraph
from auditor.options import FixOptions, Options

MAX_ROUNDS = 64
SAFE_FIRST = ("NRM002",)  # fixes that keep outputs (also: a rule class with `fix_safe = True`): applied first in a
# round and verified together against the outputs before them


class FixFailure(Exception):
    """--fix could not produce a verified model for this target."""


@dataclass
class Fixed:
    """The outcome of fixing one model in memory."""

    model: nn.Module  # the fixed copy (a GraphModule for fx captures)
    method: str  # the capture method used
    fixes: list[AppliedFix] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    before: fx.GraphModule | None = None  # the copy's graph before any fix (for --diff)


# --- fixing in memory ----------------------------------------------------------------------------------------


def fix_in_memory(loaded: Any, inputs: tuple[Any, ...], method: str, options: Options) -> Fixed:
    """Apply every fixable finding to a deep copy of `loaded.model`."""
    fix_options = options.fix or FixOptions(out=None)
    try:
        model = copy.deepcopy(loaded.model)
    except Exception as exc:  # noqa: BLE001 - a model holding something that cannot be copied
        raise FixFailure(f"the model cannot be copied ({type(exc).__name__}: {first_line(exc)}); nothing was changed") from exc
    compact_rnns(model)
    outcome = Fixed(model=model, method=method)
    state = _State()
    previous: tuple[nn.Module, int] | None = None  # the model before the last round's fixes, and the fix count then
    for _ in range(MAX_ROUNDS):
        try:
            graph = _capture(outcome, loaded, inputs)
        except Exception as exc:  # noqa: BLE001 - the last round's rewrite broke the model
            if previous is None or len(outcome.fixes) == previous[1]:
                raise FixFailure(f"the copy could not be captured with {method}: {first_line(exc)}") from exc
            _revert_round(outcome, state, previous, f"the model failed after it ({first_line(exc)})")
            previous = None
            continue
        pending = [f for f in _fixable_findings(graph, options)
                   if _key(f) not in state.done and _key(f) not in state.failed and (f.code, f.node) not in state.nodes]
        if not pending:
            break
        previous = (copy.deepcopy(outcome.model), len(outcome.fixes))
        ctx = FixContext(graph=graph, model=outcome.model, inputs=inputs, shortcut=fix_options.shortcut,
                         seed=getattr(fix_options, "seed", 0), settings=options.settings)
        try:
            if not _apply_round(ctx, pending, outcome, state, options, previous):
                break
        except _HalfDone:
            model, count = previous
            state.forget(outcome, count)
            outcome.model = model
    return outcome


def _capture(outcome: Fixed, loaded: Any, inputs: tuple[Any, ...]) -> AuditGraph:
    """The copy's graph. The first fx capture traces the copy (in eval mode, as the audit did; then the
    `self.training` flags it baked are restored); later rounds re-read the GraphModule being rewritten
    without tracing it again, so every node keeps its owning module and user line."""
    from auditor.capture import capture, eval_mode, quiet_torch
    from auditor.capture.fx import capture_traced

    if outcome.method == "fx" and outcome.before is not None:
        assert isinstance(outcome.model, fx.GraphModule)
        with eval_mode(outcome.model), quiet_torch():
            return capture_traced(outcome.model, inputs, loaded.sites)
    graph = capture(outcome.model, inputs, loaded.sites, (outcome.method,))
    if outcome.method == "fx":
        gm = graph.meta["graph_module"]
        restore_training_flags(gm, outcome.model, outcome.notes)
        outcome.model = gm
        outcome.before = copy.deepcopy(gm)
    return graph


@dataclass
class _State:
    """Which findings were fixed (parallel to `Fixed.fixes`) and which could not be."""

    failed: dict[tuple[str, str | None, str], str] = field(default_factory=dict)
    records: list[tuple[tuple[str, str | None, str], tuple[str, str | None]]] = field(default_factory=list)

    @property
    def done(self) -> set[tuple[str, str | None, str]]:
        return {key for key, _ in self.records}

    @property
    def nodes(self) -> set[tuple[str, str | None]]:
        """(code, node) pairs fixed once: a finding there again is not fixed twice (it stays reported)."""
        return {node for _, node in self.records}

    def record(self, outcome: Fixed, finding: Finding, applied: AppliedFix) -> None:
        self.records.append((_key(finding), (finding.code, finding.node)))
        outcome.fixes.append(applied)

    def forget(self, outcome: Fixed, count: int) -> None:
        """Undo the fixes after the first `count` (their round was reverted); they may be tried again."""
        del self.records[count:]
        del outcome.fixes[count:]


def _revert_round(outcome: Fixed, state: _State, previous: tuple[nn.Module, int], why: str) -> None:
    """Back to the model before the last round: its last fix (the rewrite) failed; the others are retried."""
    model, count = previous
    culprit, (culprit_key, _) = outcome.fixes[-1], state.records[-1]
    state.failed[culprit_key] = why
    outcome.notes.append(f"{_where(culprit)}: fix reverted: {why}")
    state.forget(outcome, count)
    outcome.model = model


def _apply_round(ctx: FixContext, pending: list[Finding], outcome: Fixed, state: _State, options: Options,
                 previous: tuple[nn.Module, int]) -> bool:
    """Apply the round's fixes until one rewrites the graph; returns whether anything changed."""
    from auditor.rule import find_rule

    safe_group = [f for f in pending if _declared_safe(find_rule(f.code))]
    others = [f for f in pending if not _declared_safe(find_rule(f.code))]
    deferred: list[Finding] = []
    progressed = False
    reference = _try_outputs(ctx.model, ctx.inputs) if safe_group else None
    unverifiable = safe_group if reference is None else []  # the model does not run yet: after the others
    if safe_group and reference is not None:
        group: list[tuple[Finding, AppliedFix, bool]] = []
        for finding in safe_group:
            attempt = _try_fix(find_rule(finding.code), ctx, finding, outcome, state, deferred, options)
            if attempt is not None:
                group.append((finding, *attempt))
        if group:
            equal, delta = outputs_match(reference, eval_outputs(ctx.model, ctx.inputs))
            if not equal:
                for finding, _, _ in group:
                    state.failed[_key(finding)] = "outputs changed"
                    outcome.notes.append(f"{_where(finding)}: fix reverted: it changed the outputs (max |diff| {delta:.2g})")
                outcome.model = previous[0]
                return True
            for finding, applied, _ in group:
                state.record(outcome, finding, replace(applied, safe=True))
            codes = ", ".join(sorted({a.code for _, a, _ in group}))
            outcome.notes.append(f"{codes}: outputs verified unchanged on the example inputs (eval mode, max |diff| {delta:.2g})")
            progressed = True
            if any(rewrote for _, _, rewrote in group):
                return True
    for finding in others:
        attempt = _try_fix(find_rule(finding.code), ctx, finding, outcome, state, deferred, options)
        if attempt is None:
            continue
        applied, rewrote = attempt
        if applied.safe:
            outcome.notes.append(f"{_where(applied)}: claims to keep outputs but was not verified: listed as changing behaviour")
            applied = replace(applied, safe=False)
        state.record(outcome, finding, applied)
        progressed = True
        if rewrote:
            return True  # the graph changed: recapture before the next fix reads it
    if not progressed:
        for finding in deferred:
            state.failed[_key(finding)] = "stale"
            outcome.notes.append(f"{_where(finding)}: not fixed: the graph changed around it; run --fix again on the result")
        for finding in unverifiable:
            state.failed[_key(finding)] = "unverifiable"
            outcome.notes.append(f"{_where(finding)}: not fixed: it must keep the outputs, which cannot be "
                                 "checked while the model fails on the example inputs")
    return progressed


def _where(item: Finding | AppliedFix) -> str:
    """`DRO001 [head.drop]` in notes (`<root>` for the model's own forward)."""
    module = "<root>" if item.module == "" else (item.module or "-")
    return f"{item.code} [{module}]"


def _declared_safe(rule: Any) -> bool:
    return rule is not None and (rule.code in SAFE_FIRST or bool(getattr(rule, "fix_safe", False)))


def _try_outputs(model: nn.Module, inputs: tuple[Any, ...]) -> list[torch.Tensor] | None:
    try:
        return eval_outputs(model, inputs)
    except Exception:  # noqa: BLE001 - the model does not run (yet): a residual add still mismatched
        return None


def _try_fix(rule: Any, ctx: FixContext, finding: Finding, outcome: Fixed, state: _State, deferred: list[Finding],
             options: Options) -> tuple[AppliedFix, bool] | None:
    """(the applied fix, whether it rewrote the graph), or None with a note saying why not."""
    where = _where(finding)
    fix = getattr(rule, "fix", None) if rule is not None else None
    if fix is None:
        return None
    version = _graph_version(ctx)
    try:
        applied = fix(ctx, finding)
    except Stale:
        deferred.append(finding)
        return None
    except CannotFix as exc:
        state.failed[_key(finding)] = str(exc)
        outcome.notes.append(f"{where}: not fixed: {exc}")
        if _graph_version(ctx) != version:
            raise _HalfDone() from exc
        return None
    except Exception as exc:  # noqa: BLE001 - a bug in one fix must not stop the others
        if options.verbose:
            raise
        state.failed[_key(finding)] = "internal error"
        outcome.notes.append(f"{where}: not fixed: the fix failed internally ({type(exc).__name__}: {first_line(exc)})")
        if _graph_version(ctx) != version:
            raise _HalfDone() from exc
        return None
    if applied is None:
        state.failed[_key(finding)] = "does not apply"
        outcome.notes.append(f"{where}: not fixed: the fix does not apply here")
        return None
    return applied, _graph_version(ctx) != version


class _HalfDone(Exception):
    """A fix failed after it had started rewriting the graph: the round is undone."""


def _graph_version(ctx: FixContext) -> Any:
    if not ctx.can_rewrite:
        return None
    return ctx.gm.code


def _fixable_findings(graph: AuditGraph, options: Options) -> list[Finding]:
    from auditor.engine import _kept, run_graph_rules
    from auditor.rule import find_rule

    notes: list[str] = []
    findings = _kept(run_graph_rules(graph, options, notes), options)
    fixable = []
    for finding in findings:
        rule = find_rule(finding.code)
        if finding.fixable and rule is not None and callable(getattr(rule, "fix", None)):
            fixable.append(finding)
    return fixable


def _key(finding: Finding) -> tuple[str, str | None, str]:
    return (finding.code, finding.module, finding.message)


# --- train/eval-dependent code -------------------------------------------------------------------------------


def restore_training_flags(gm: fx.GraphModule, model: nn.Module, notes: list[str]) -> None:
    """Captures trace in eval mode, which bakes `self.training` into the graph: `F.dropout(x, p,
    self.training)` becomes `training=False`, `dropout_p=p if self.training else 0.0` becomes 0.0. Trace again
    in train mode and, where the two differ only in such a value, compute it from the owning module's
    `training` at run time instead (the flag itself, or `training * p`)."""
    from auditor.capture.fx import trace

    try:
        with train_mode(model):
            trained = trace(model)
    except Exception:  # noqa: BLE001 - not traceable in train mode: keep the eval trace as it is
        notes.append("the model does not trace in train mode; the fixed code follows its eval-mode forward")
        return
    eval_nodes, train_nodes = list(gm.graph.nodes), list(trained.graph.nodes)
    if [(n.op, str(n.target)) for n in eval_nodes] != [(n.op, str(n.target)) for n in train_nodes]:
        notes.append("the forward branches on self.training; the fixed code keeps the eval-mode branch")
        return
    patches: list[tuple[fx.Node, int | str, Any]] = []
    for e, t in zip(eval_nodes, train_nodes):
        places: list[tuple[int | str, Any, Any]] = [(i, a, b) for i, (a, b) in enumerate(zip(e.args, t.args))]
        places += [(k, e.kwargs[k], t.kwargs.get(k)) for k in e.kwargs]
        for where, in_eval, in_train in places:
            if _same(in_eval, in_train):
                continue
            if not _mode_value(in_eval, in_train):
                notes.append("the forward depends on self.training; the fixed code keeps the eval-mode values")
                return
            patches.append((e, where, in_train))
    for node, where, in_train in patches:
        value = get_training_flag(gm, node, _existing_owner(gm, _owner(node)))
        if not isinstance(in_train, bool):
            with gm.graph.inserting_before(node):
                value = gm.graph.call_function(operator.mul, (value, in_train))
        if isinstance(where, int):
            node.update_arg(where, value)
        else:
            node.update_kwarg(where, value)
    if patches:
        finish(gm)


def _mode_value(in_eval: Any, in_train: Any) -> bool:
    """A value that is `self.training` (True/False) or `p if self.training else 0`."""
    if isinstance(in_eval, bool) and isinstance(in_train, bool):
        return True
    numbers = (int, float)
    return (isinstance(in_eval, numbers) and isinstance(in_train, numbers) and not isinstance(in_eval, bool)
            and not isinstance(in_train, bool) and in_eval == 0)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        return isinstance(a, fx.Node) and isinstance(b, fx.Node) and a.name == b.name
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, slice) and isinstance(b, slice):
        return all(_same(x, y) for x, y in ((a.start, b.start), (a.stop, b.stop), (a.step, b.step)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # noqa: BLE001 - tensors and other values without a plain ==
        return a is b


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    qualname, _ = list(stack.values())[-1]
    return str(qualname)


def _existing_owner(gm: fx.GraphModule, owner: str) -> str:
    """The owner, or its nearest ancestor the GraphModule kept (fx keeps only modules the graph uses; train and
    eval mode are set recursively, so an ancestor's flag is the same)."""
    while owner:
        try:
            gm.get_submodule(owner)
            return owner
        except AttributeError:
            owner = owner.rpartition(".")[0]
    return ""


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


# --- running and comparing -----------------------------------------------------------------------------------


def eval_outputs(model: nn.Module, inputs: tuple[Any, ...]) -> list[torch.Tensor]:
    """The output tensors in eval mode (fx's GraphModule prints a failing forward's code to stderr: muted)."""
    from auditor.capture import eval_mode

    compact_rnns(model)
    with eval_mode(model), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        out = model(*inputs)
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def compact_rnns(model: nn.Module) -> None:
    """Copied or re-initialized recurrent weights are no longer one cuDNN chunk (a warning on every call)."""
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters()


def outputs_match(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[bool, float]:
    if len(a) != len(b):
        return False, float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False, float("inf")
        if not x.is_floating_point():
            if not torch.equal(x, y.to(x.device)):
                return False, float("inf")
            continue
        x64, y64 = x.double(), y.to(x.device).double()
        delta = float((x64 - y64).abs().max()) if x.numel() else 0.0
        scale = float(x64.abs().max()) if x.numel() else 0.0
        worst = max(worst, delta)
        if not torch.allclose(x64, y64, rtol=1e-4, atol=1e-5 * max(1.0, scale), equal_nan=True):
            return False, delta
    return True, worst


# --- the whole --fix for one audited model -------------------------------------------------------------------


def fix_result(engine: Any, loaded: Any, graph: AuditGraph, inputs: tuple[Any, ...], result: TargetResult,
               output: OutputFolder | None) -> tuple[Fixed, Path | None]:
    """Fix, write into `output`'s staging area, verify by loading and re-auditing; updates `result`.
    Returns the fixed model and the staged folder (None when nothing was written)."""
    options: Options = engine.options
    fixed = fix_in_memory(loaded, inputs, graph.method, options)
    contents = FolderContents(target=result.target, kind="code" if fixed.method == "fx" else "weights",
                              fixes=list(fixed.fixes), notes=list(fixed.notes), input_specs=_specs(inputs))
    if output is None:
        remaining = _reaudit_live(engine, fixed.model, inputs, loaded, fixed.method)
        _report(result, fixed, remaining, None)
        return fixed, None
    folder = output.stage(result.target)
    try:
        _write(folder, fixed, loaded, inputs, contents)
        remaining = _verify(engine, folder, fixed.model, inputs, fixed.method)
        contents.remaining = [_describe(f, folder) for f in _remaining(result.findings, remaining)]
        write_fixes(folder, contents)
    except BaseException:
        output.discard(folder)
        raise
    finally:
        _forget_modules(folder)
    _report(result, fixed, remaining, contents.diff)
    return fixed, folder


def _write(folder: Path, fixed: Fixed, loaded: Any, inputs: tuple[Any, ...], contents: FolderContents) -> None:
    from auditor.fixing.codegen import ModelSource, class_name_for, render_model

    has_inputs = save_inputs(folder, inputs)
    if fixed.method == "fx":
        gm = fixed.model
        assert isinstance(gm, fx.GraphModule)
        summary = [f"{f.code} [{f.module or '<root>'}] {f.action}" for f in fixed.fixes]
        source = ModelSource(class_name=class_name_for(type(loaded.model).__name__), origin=contents.target,
                             summary=summary, has_inputs_file=has_inputs, input_specs=contents.input_specs)
        try:
            text, notes = render_model(gm, source)
            if fixed.before is not None:
                before_text, _ = render_model(fixed.before, replace(source, summary=[]))
                contents.diff = "".join(difflib.unified_diff(
                    before_text.splitlines(keepends=True), text.splitlines(keepends=True), "before/model.py", "after/model.py"))
        except CannotFix as exc:
            raise FixFailure(f"cannot write the fixed model: {exc}") from exc
        contents.notes.extend(notes)
        fixed.notes.extend(notes)
        (folder / "model.py").write_text(text, encoding="utf-8")
        save_tensors(folder / "weights.pt", dict(gm.state_dict()))
    else:
        write_weights_loader(folder, fixed, loaded, contents, has_inputs)
    write_manifest(folder, contents, {} if has_inputs else {"inputs": contents.input_specs})
    write_fixes(folder, contents)


def write_weights_loader(folder: Path, fixed: Fixed, loaded: Any, contents: FolderContents, has_inputs: bool) -> None:
    """For models torch.fx cannot trace: `model.py` rebuilds the model from the user's source and loads the
    fixed weights; parameters a fix removed (a folded bias) are removed again after building."""
    from auditor.fixing.codegen import render_weights_loader

    origin = getattr(loaded, "origin", None)
    if not origin:
        raise FixFailure("this model was not built from a file or module the fixed folder could import again; "
                         "it cannot be written (use auditor.fix() to get the fixed module in Python)")
    original = set(loaded.model.state_dict())
    current = dict(fixed.model.state_dict())
    added = sorted(set(current) - original)
    if added:
        raise FixFailure(f"cannot write new parameters ({', '.join(added)}) without a torch.fx graph")
    dropped = sorted(k for k in original - set(current))
    text = render_weights_loader(origin, dropped, contents.target, [f"{f.code} [{f.module or '<root>'}] {f.action}" for f in fixed.fixes], has_inputs, contents.input_specs)
    (folder / "model.py").write_text(text, encoding="utf-8")
    save_tensors(folder / "weights.pt", current)


def _verify(engine: Any, folder: Path, expected: nn.Module, inputs: tuple[Any, ...], method: str) -> TargetResult:
    """Load the written folder as `audit DIR` does, check it reproduces the fixed copy, and re-audit it."""
    from auditor.engine import Engine
    from auditor.loading.models import ModelLoader
    from auditor.prepare import model_device
    from auditor.targets import Kind, Target

    try:
        loaded = ModelLoader().load(Target(Kind.FIXED, str(folder), path=folder))[0]
    except TargetError as exc:
        raise FixFailure(f"the written model does not load: {exc}") from exc
    want = runs(expected, inputs)
    device = model_device(expected)
    written = loaded.model.to(device)
    try:
        got = eval_outputs(written, inputs)
    except Exception as exc:  # noqa: BLE001
        raise FixFailure(f"the written model does not run on the example inputs: {type(exc).__name__}: {first_line(exc)}") from exc
    equal, delta = outputs_match(want, got)
    if not equal:
        raise FixFailure(f"the written model does not reproduce the fixed one (max |diff| {delta:.3g}); this is a bug in --fix")
    loaded.example_inputs = tuple(inputs)
    loaded.owned = False
    reaudit = Engine(replace(engine.options, fix=None, capture=(method,))).audit_loaded(loaded)
    if reaudit.status != "ok":
        raise FixFailure(f"the written model cannot be re-audited: {reaudit.error}")
    return reaudit


def runs(model: nn.Module, inputs: tuple[Any, ...]) -> list[torch.Tensor]:
    """The fixed model's outputs on the example inputs; FixFailure when it still fails (a finding that breaks
    the forward was not fixed), since a fixed model must run."""
    try:
        return eval_outputs(model, inputs)
    except Exception as exc:  # noqa: BLE001
        raise FixFailure(
            f"the fixed model still fails on the example inputs ({type(exc).__name__}: {first_line(exc)}); "
            "nothing was written: fix what breaks the forward (RES001 with --select, or by hand) and run --fix again"
        ) from exc


def _reaudit_live(engine: Any, model: nn.Module, inputs: tuple[Any, ...], loaded: Any, method: str) -> TargetResult:
    from auditor.engine import Engine
    from auditor.loading.models import LoadedModel

    runs(model, inputs)
    live = LoadedModel(label=loaded.label, model=model, sites=dict(loaded.sites), namespace=None, owned=False, example_inputs=tuple(inputs))
    reaudit = Engine(replace(engine.options, fix=None, capture=(method,))).audit_loaded(live)
    if reaudit.status != "ok":
        raise FixFailure(f"the fixed model cannot be re-audited: {reaudit.error}")
    return reaudit


def _report(result: TargetResult, fixed: Fixed, reaudit: TargetResult, diff: str | None) -> None:
    """The result shows what remains (at the user's locations where the finding was there before), the fixes,
    and notes on what could not be fixed."""
    remaining = _remaining(result.findings, reaudit)
    fixed_keys = {(f.code, f.module) for f in fixed.fixes}
    still = sorted({(f.code, f.module) for f in remaining} & fixed_keys, key=str)
    notes = [f"fix: {n}" for n in dict.fromkeys(fixed.notes)]
    notes += [f"fix: {code} [{'<root>' if module == '' else module}]: still reported after the fix" for code, module in still]
    if result.capture is not None:
        result.capture.notes.extend(notes)
    result.findings = remaining
    result.fixes = list(fixed.fixes)
    result.fix_diff = diff


def _remaining(original: list[Finding], reaudit: TargetResult) -> list[Finding]:
    """The re-audit's findings, shown at the original finding's location when the same (code, module) was
    reported before; findings the fixes introduced keep the fixed model's location."""
    pool: dict[tuple[str, str | None], list[Finding]] = {}
    for finding in original:
        pool.setdefault((finding.code, finding.module), []).append(finding)
    remaining = []
    for finding in reaudit.findings:
        candidates = pool.get((finding.code, finding.module))
        remaining.append(candidates.pop(0) if candidates else finding)
    return remaining


def _describe(finding: Finding, folder: Path) -> str:
    """A remaining finding for FIXES.md; locations inside the fixed folder are relative to it."""
    from auditor.locations import display_path

    file = finding.file
    prefix = display_path(str(folder)).rstrip("/") + "/"
    if file and file.startswith(prefix):
        file = file[len(prefix):]
    where = f"{file}:{finding.line}" if file and finding.line else (file or "-")
    return f"{finding.code} {where} [{finding.module or '<root>'}] {finding.message}"


def _specs(inputs: tuple[Any, ...]) -> list[str]:
    specs = []
    for value in inputs:
        if isinstance(value, torch.Tensor):
            dims = ",".join(str(d) for d in value.shape) or "1"
            dtype = str(value.dtype).replace("torch.", "")
            specs.append(dims if dtype == "float32" else f"{dtype}:{dims}")
    return specs


def _forget_modules(folder: Path) -> None:
    """Drop the modules imported from a staged folder (it is about to move), so later loads import afresh."""
    root = str(folder.resolve())
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and str(Path(path).resolve()).startswith(root):
            del sys.modules[name]


def failure_message(exc: BaseException, verbose: bool) -> tuple[str, str | None]:
    text = f"--fix failed: {exc}" if isinstance(exc, (FixFailure, TargetError)) else f"--fix failed: internal error: {type(exc).__name__}: {first_line(exc)}"
    return text, ("".join(traceback.format_exception(exc)) if verbose else None)
