"""TRN001-TRN002: training-script suggestions read from the source (no import, no torch)."""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Iterator

from auditor.findings import Finding, Severity
from auditor.rule import Rule, SourceContext, register
from auditor_rules._script import EVALUATION_NAME, Script
from auditor_rules._training_code import Call, calls_in, dotted, file_calls, file_imports, file_nodes, is_missing, literal, scopes

if TYPE_CHECKING:
    from auditor.sourcefix import ScriptContext, SourceEdit

WARMUP = re.compile(r"warm_?up", re.IGNORECASE)
# A script that mentions these already handles soft targets: a smoothing option, mixup or cutmix (soft labels
# by construction), a soft-target loss.
SOFT_TARGETS = re.compile(r"smoothing|mixup|mix_up|cutmix|soft_?target", re.IGNORECASE)


def _is_cross_entropy_loss(call: Call) -> bool:
    resolved, name = call.resolved or "", call.name or ""
    return call.last == "CrossEntropyLoss" and (resolved.startswith("torch.") or name.split(".")[0] == "nn")


def _is_functional_cross_entropy(call: Call) -> bool:
    return call.resolved == "torch.nn.functional.cross_entropy" or call.name in ("F.cross_entropy", "nn.functional.cross_entropy")


@register
class NoLabelSmoothing(Rule):
    """
    ## What it does
    Flags a classification cross-entropy without label smoothing: `nn.CrossEntropyLoss()` built without
    `label_smoothing`, or `F.cross_entropy(...)` in a training step (a function that calls `.backward()`) without
    it. Losses with `ignore_index` (token-level language modeling, segmentation) are left alone: smoothing is not
    the convention there.

    ## Why is this bad?
    One-hot targets push the logits of the right class toward infinity: the model becomes over-confident and
    poorly calibrated, and generalizes a little worse. Mixing the target with the uniform distribution
    (epsilon around 0.1) is a cheap, standard regularizer for classification. It is a suggestion, not an error:
    it hurts knowledge distillation (a smoothed teacher transfers less) and is pointless when you need
    calibrated probabilities from another method.

    ## Example
    ```python
    criterion = nn.CrossEntropyLoss()
    ```

    ## Use instead
    ```python
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    ```

    ## Fix
    `--fix` adds `label_smoothing=0.1` (or disable this rule, e.g. for a distillation student).

    ## Fix safety
    Unsafe: the loss changes (applied with `--unsafe-fixes`).

    ## References
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    Muller, Kornblith, Hinton, "When Does Label Smoothing Help?", NeurIPS 2019.
    """

    code = "TRN001"
    name = "no-label-smoothing"
    severity = Severity.INFO
    summary = "source: classification CrossEntropyLoss without label_smoothing"
    scope = "source"
    fix_title = "Add label_smoothing=0.1"
    fix_safety = "unsafe"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        if "CrossEntropyLoss" not in ctx.text and "cross_entropy" not in ctx.text or _handles_soft_targets(file_nodes(ctx)):
            return
        imports = file_imports(ctx)
        script = Script.of(ctx)
        for statements in scopes(ctx.tree):
            calls = calls_in(statements, imports)
            trains = any(c.last == "backward" and c.receiver is not None for c in calls)
            for call in calls:
                module_form = _is_cross_entropy_loss(call)
                if not (module_form or (trains and _is_functional_cross_entropy(call))):
                    continue
                if call.has_star_kwargs or call.keyword("ignore_index") is not None:
                    continue
                smoothing = call.keyword("label_smoothing")
                if smoothing is not None and (is_missing(literal(smoothing.value)) or literal(smoothing.value) != 0):
                    continue
                if _evaluation_only(script, call.node) or _fallback(script, call.node):
                    continue
                yield self.finding(
                    f"`{call.name}(...)` without label smoothing; for classification, `label_smoothing=0.1` usually "
                    "improves calibration and accuracy",
                    file=ctx.path, line=call.node.lineno,
                )

    def source_fix(self, ctx: ScriptContext, finding: Finding) -> SourceEdit:
        """`label_smoothing=0.1` on the loss (replacing a `label_smoothing=0`)."""
        call = ctx.call_at(finding.line or 0, ("CrossEntropyLoss", "cross_entropy"))
        return ctx.edited(finding, ctx.set_argument(call, "label_smoothing", "0.1"), "label_smoothing=0.1", safe=False)


def _handles_soft_targets(nodes: list[ast.AST]) -> bool:
    """A name, attribute, argument or class mentions a smoothing option, mixup/cutmix or soft targets (the
    `label_smoothing=` keyword of a loss itself aside: `label_smoothing=0.0` is no option)."""
    for node in nodes:
        if isinstance(node, ast.keyword) and node.arg == "label_smoothing":
            continue
        if any(SOFT_TARGETS.search(text) for text in _identifiers(node)):
            return True
    return False


def _evaluation_only(script: Script, call: ast.Call) -> bool:
    """A loss that only measures: built in evaluation code (a `validate` function, under `torch.no_grad()`),
    bound to a name that says so (`val_criterion`, `validate_loss_fn`), or whose every use is evaluation code."""
    if script.in_evaluation(call):
        return True
    target = _bound_name(script, call)
    if target is None:
        return False
    if EVALUATION_NAME.search(target.rpartition(".")[2]):
        return True
    uses = [n for n in script.nodes if isinstance(n, (ast.Name, ast.Attribute)) and dotted(n) == target and isinstance(n.ctx, ast.Load)]
    return bool(uses) and all(script.in_evaluation(use) or _passed_to_evaluation(script, use) for use in uses)


def _passed_to_evaluation(script: Script, use: ast.AST) -> bool:
    parent = script.parent(use)
    if isinstance(parent, ast.keyword):
        parent = script.parent(parent)
    if isinstance(parent, ast.Call) and parent.func is not use:
        return bool(EVALUATION_NAME.search((dotted(parent.func) or "").rpartition(".")[2]))
    return False


def _bound_name(script: Script, call: ast.Call) -> str | None:
    """The name a loss is assigned to: `criterion = nn.CrossEntropyLoss()` (also through `.to(device)`)."""
    node: ast.AST = call
    parent = script.parent(node)
    while isinstance(parent, ast.Attribute) and isinstance(script.parent(parent), ast.Call):  # `.to(device)`
        node = script.parent(parent)
        parent = script.parent(node)
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        return dotted(parent.targets[0])
    return None


def _fallback(script: Script, call: ast.Call) -> bool:
    """A default for when no loss was configured: `loss_fn or nn.CrossEntropyLoss()`, a parameter's default,
    the body of `if criterion is None:`, the `else` of a conditional expression."""
    child: ast.AST = call
    for ancestor in script.ancestors(call):
        if isinstance(ancestor, ast.BoolOp) and isinstance(ancestor.op, ast.Or) and ancestor.values[0] is not child:
            return True
        if isinstance(ancestor, ast.arguments):
            return True
        if isinstance(ancestor, ast.IfExp) and child is ancestor.orelse:
            return True
        if isinstance(ancestor, ast.If) and child in ancestor.body and _tests_none(ancestor.test):
            return True
        if isinstance(ancestor, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return False
        child = ancestor
    return False


def _tests_none(test: ast.expr) -> bool:
    return isinstance(test, ast.Compare) and any(isinstance(c, ast.Constant) and c.value is None for c in test.comparators) or (
        isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
    )


# Schedules that decay from the start; the ones that ramp up by themselves (OneCycleLR, CyclicLR, LinearLR with a
# start factor below 1, ConstantLR) or usually wrap a warm-up (SequentialLR, ChainedScheduler, LambdaLR) are not.
DECAYING = frozenset({
    "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "ReduceLROnPlateau",
    "PolynomialLR",
})
RAMPING = frozenset({"OneCycleLR", "CyclicLR", "SequentialLR", "ChainedScheduler", "LambdaLR", "MultiplicativeLR", "ConstantLR"})
ADAM = re.compile(r"^(Fused|Paged)?Adam(W)?(8bit|32bit)?$")


def _is_torch_scheduler(call: Call, names: frozenset[str]) -> bool:
    resolved = call.resolved or ""
    return call.last in names and ("lr_scheduler" in resolved or resolved.startswith("torch.") or call.last == resolved)


@register
class NoLrWarmup(Rule):
    """
    ## What it does
    Flags a script that trains with Adam or AdamW and a learning-rate schedule (`CosineAnnealingLR`, `StepLR`,
    `ExponentialLR`, ... or a Hugging Face `get_*_schedule_with_warmup` with `num_warmup_steps=0`) but shows
    no warm-up anywhere: no ramping scheduler (`LinearLR` starting below 1, `OneCycleLR`, `SequentialLR`,
    `LambdaLR`) and no name mentioning warm-up.

    ## Why is this bad?
    Adam divides each step by a running estimate of the gradient's second moment, which is noisy over the
    first steps; normalization statistics are not settled either. Starting at the full learning rate then
    takes large, badly-directed steps that can destabilize training for good (the reason transformers are
    trained with warm-up, and why large-batch SGD needs it too). A short linear ramp over the first few hundred
    or thousand steps avoids it at no cost.

    ## Example
    ```python
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    ```

    ## Use instead
    ```python
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=500)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps - 500)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[500])
    ```

    ## Fix
    `--fix` adds a warm-up phase: a `LinearLR` from 1% of the rate over 5% of the schedule's total steps (its
    `T_max` or `total_iters`; 5 steps when it has none), then the schedule, in a `SequentialLR`; a Hugging Face
    schedule asked for zero warm-up steps gets 5% of its training steps. (Or use RAdam, which rectifies the early
    steps by itself.)

    ## Fix safety
    Unsafe: the learning rate of the first steps changes (applied with `--unsafe-fixes`).

    ## References
    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017.
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond" (RAdam), ICLR 2020.
    """

    code = "TRN002"
    name = "no-lr-warmup"
    severity = Severity.INFO
    summary = "source: Adam/AdamW with a schedule and no warm-up"
    scope = "source"
    fix_title = "Add a linear warm-up before the schedule"
    fix_safety = "unsafe"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        calls = file_calls(ctx)
        adam = next((c for c in calls if ADAM.match(c.last)), None)
        if adam is None:
            return
        schedules = [c for c in calls if _is_torch_scheduler(c, DECAYING) or _no_warmup_steps(c) or _decaying_linear(c)]
        if not schedules or _has_warmup(file_nodes(ctx), calls):
            return
        schedule = schedules[0]
        yield self.finding(
            f"{adam.last} (line {adam.node.lineno}) with `{schedule.name}` and no learning-rate warm-up: ramp the "
            "rate up over the first steps (e.g. LinearLR(start_factor=0.01) then this schedule, in a SequentialLR)",
            file=ctx.path, line=schedule.node.lineno,
        )

    def source_fix(self, ctx: ScriptContext, finding: Finding) -> SourceEdit:
        """A warm-up: the zero warm-up steps of a Hugging Face schedule become 5% of its training steps; a decaying
        torch schedule goes after a `LinearLR` warm-up in a `SequentialLR`."""
        schedule = next((c for c in file_calls(ctx) if c.node.lineno == finding.line and (
            _is_torch_scheduler(c, DECAYING) or _no_warmup_steps(c) or _decaying_linear(c))), None)
        if schedule is None:
            ctx.cannot(f"no schedule on line {finding.line}")
        call = ctx.call_at(finding.line or 0, (schedule.last,))
        if _no_warmup_steps(schedule):
            total = schedule.keyword("num_training_steps")
            node = total.value if total is not None else (schedule.node.args[2] if len(schedule.node.args) > 2 else None)
            if node is None:
                ctx.cannot("the schedule's number of training steps is not written")
            steps = f"max(1, {ast.unparse(node)} // 20)"
            position = 1 if len(schedule.node.args) > 1 else None
            return ctx.edited(finding, ctx.set_argument(call, "num_warmup_steps", steps, position), f"num_warmup_steps=0 => {steps}", safe=False)
        if schedule.last == "ReduceLROnPlateau":
            ctx.cannot("ReduceLROnPlateau cannot follow a warm-up in a SequentialLR: add the warm-up by hand")
        total = schedule.keyword("T_max") or schedule.keyword("total_iters")
        node = total.value if total is not None else (schedule.node.args[1] if schedule.last == "CosineAnnealingLR" and len(schedule.node.args) > 1 else None)
        change = ctx.warm_up(call, ast.unparse(node) if node is not None else None)
        return ctx.edited(finding, change, f"LinearLR warm-up, then {schedule.last}, in a SequentialLR", safe=False)


def _decaying_linear(call: Call) -> bool:
    """`LinearLR(opt, start_factor=1.0, end_factor=0.1)` decays; the default start factor (1/3) ramps up."""
    if not _is_torch_scheduler(call, frozenset({"LinearLR"})):
        return False
    start = call.keyword("start_factor")
    value = literal(start.value) if start is not None else None
    return isinstance(value, (int, float)) and value >= 1


def _no_warmup_steps(call: Call) -> bool:
    """A warm-up schedule asked for zero warm-up steps (`get_cosine_schedule_with_warmup(opt, 0, total)`)."""
    if not WARMUP.search(call.last):
        return False
    steps = call.keyword("num_warmup_steps")
    node = steps.value if steps is not None else (call.node.args[1] if len(call.node.args) > 1 else None)
    return literal(node) == 0


def _has_warmup(nodes: list[ast.AST], calls: list[Call]) -> bool:
    """A ramping scheduler, or any name, argument or attribute that mentions warm-up (except a zero one)."""
    if any(_is_torch_scheduler(c, RAMPING) for c in calls):
        return True
    if any(_is_torch_scheduler(c, frozenset({"LinearLR"})) and not _decaying_linear(c) for c in calls):
        return True
    zero = {id(n) for c in calls if _no_warmup_steps(c) for n in ast.walk(c.node.func)}
    for node in nodes:
        if id(node) in zero:
            continue
        for text in _identifiers(node):
            if WARMUP.search(text):
                if isinstance(node, ast.keyword) and literal(node.value) == 0:
                    continue
                return True
    return False


def _identifiers(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.keyword) and node.arg:
        return [node.arg]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    return []
