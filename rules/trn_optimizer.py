"""TRN003 and TRN008: how the optimizer and its schedule are configured, read from the source."""

from __future__ import annotations

import ast
import re
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.rule import Rule, SourceContext, register
from auditor_rules._script import Script
from auditor_rules._training_code import Call, dotted, file_calls, is_missing, literal
from auditor_rules.trn_step_order import stepped_optimizer

ADAMW = re.compile(r"^(Fused|Paged)?AdamW(8bit|32bit)?$")
# A file that names these builds parameter groups (or lets a helper do it): timm's param_groups_weight_decay,
# the `no_decay = ["bias", "LayerNorm.weight"]` of BERT-style scripts.
PARAM_GROUPS = re.compile(r"no_?decay|param_groups|parameter_groups|weight_decay_groups|get_parameter_names|exclude_from_weight_decay", re.IGNORECASE)


@register
class WeightDecayOnNormAndBias(Rule):
    """
    ## What it does
    Flags an AdamW optimizer built over `model.parameters()` (every parameter in one group) with an explicit
    non-zero `weight_decay`: the decay then also applies to biases and to the weights of LayerNorm / BatchNorm.
    AdamW's default (0.01, small, and not asked for) is left alone, and so are scripts that build parameter
    groups anywhere (a `no_decay` list, timm's `param_groups_weight_decay`).

    ## Why is this bad?
    Weight decay pulls weights toward zero to limit the capacity of the weight matrices. A norm's gain and a
    bias set a scale and an offset, not a capacity: decaying a LayerNorm gain toward zero shrinks the layer's
    output for nothing, and for a layer followed by BatchNorm the decay on its weights only changes the
    effective learning rate. The transformer recipe since BERT (and timm's default for vision models) excludes
    them; including them costs accuracy, most with the large decays (0.05-0.1) AdamW runs use.

    ## Example
    ```python
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    ```

    ## Use instead
    ```python
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # biases, norm weights
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3
    )
    ```

    ## Fix
    No automatic fix: split the parameters into two groups (one-dimensional tensors without decay), or use a
    helper that does (timm's `create_optimizer_v2`, the Hugging Face Trainer).

    ## References
    Loshchilov, Hutter, "Decoupled Weight Decay Regularization" (AdamW), ICLR 2019.
    Devlin et al., "BERT", NAACL 2019 (the reference implementation's no-decay list).
    He et al., "Bag of Tricks for Image Classification with Convolutional Neural Networks", CVPR 2019 (no bias
    decay).
    """

    code = "TRN003"
    name = "weight-decay-on-norm-and-bias"
    severity = Severity.INFO
    summary = "source: AdamW over model.parameters() decays biases and norm weights too"
    scope = "source"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        if "AdamW" not in ctx.text or PARAM_GROUPS.search(ctx.text):
            return
        for call in file_calls(ctx):
            if not ADAMW.match(call.last) or call.has_star_kwargs:
                continue
            params = call.node.args[0] if call.node.args else (call.keyword("params").value if call.keyword("params") else None)
            model = _all_parameters_of(params)
            decay = _weight_decay(call)
            if model is None or decay is None or decay <= 0:
                continue
            yield self.finding(
                f"`{call.name}({model}.parameters(), weight_decay={decay:g})` decays every parameter of `{model}`, "
                "biases and LayerNorm/BatchNorm weights included: give one-dimensional parameters their own group "
                "with weight_decay=0",
                file=ctx.path, line=call.node.lineno,
            )


def _all_parameters_of(params: ast.expr | None) -> str | None:
    """`model` for `model.parameters()` (also through `list(...)`), the one-group form."""
    if isinstance(params, ast.Call) and (dotted(params.func) or "") == "list" and params.args:
        params = params.args[0]
    if isinstance(params, ast.Call) and isinstance(params.func, ast.Attribute) and params.func.attr == "parameters" and not params.args:
        return dotted(params.func.value)
    return None


def _weight_decay(call: Call) -> float | None:
    """The weight decay an AdamW call sets explicitly as a literal; None for the default or a computed one."""
    keyword = call.keyword("weight_decay")
    node = keyword.value if keyword is not None else (call.node.args[4] if len(call.node.args) > 4 else None)
    if node is None:
        return None
    value = literal(node)
    return float(value) if not is_missing(value) and isinstance(value, (int, float)) else None


@register
class WarmupTooShort(Rule):
    """
    ## What it does
    Flags a learning-rate warm-up that lasts fewer optimizer steps than `min-warmup-steps` (default 10):
    `get_*_schedule_with_warmup(..., num_warmup_steps=N)` or `TrainingArguments(warmup_steps=N)` with
    0 < N < 10 (a literal, or a name assigned one), and a `LinearLR` warm-up (start factor below 1) stepped once
    per batch (in the loop that steps the optimizer, or handed to Lightning with `"interval": "step"`) whose
    `total_iters` is under 10 (its default is 5). A `LinearLR` stepped once per epoch warms up over epochs and
    is not flagged; no warm-up at all is TRN002's.

    ## Why is this bad?
    A warm-up exists to keep the first updates small while Adam's second-moment estimate averages only a few
    gradients: with beta2 = 0.999 the variance of the adaptive step is unbounded for the first four steps, and
    RAdam, which corrects for it, still applies less than 5% of the learning rate at step 10 and a fifth of it
    at step 100 (Liu et al.); an untuned warm-up needs on the order of 2 / (1 - beta2) = 2000 steps (Ma &
    Yarats). A ramp over a handful of steps ends before any of that has settled: the run starts at full rate as
    if there were no warm-up, while the script reads as if it had one.

    ## Example
    ```python
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=5, num_training_steps=10_000)
    ```

    ## Use instead
    ```python
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=500, num_training_steps=10_000)
    ```

    ## Fix
    No automatic fix: warm up over hundreds of steps (a few percent of training), or step a per-epoch
    `LinearLR` once per epoch.

    ## References
    Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond" (RAdam), ICLR 2020.
    Ma, Yarats, "On the Adequacy of Untuned Warmup for Adaptive Optimization", AAAI 2021.
    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017.
    """

    code = "TRN008"
    name = "warmup-too-short"
    severity = Severity.WARNING
    summary = "source: a learning-rate warm-up over fewer than a handful of optimizer steps"
    scope = "source"
    settings = {"min-warmup-steps": 10}

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        if not re.search(r"warm|LinearLR", ctx.text, re.IGNORECASE):
            return
        minimum = int(ctx.setting("min-warmup-steps"))
        script = Script.of(ctx)
        for call in file_calls(ctx):
            steps, written = _warmup_steps(script, call)
            if steps is not None and 0 < steps < minimum:
                yield self.finding(
                    f"{written} warms the learning rate up over {steps} optimizer step{'s' if steps != 1 else ''}, "
                    f"fewer than {minimum}: Adam's moment estimates have not settled by then; warm up over hundreds "
                    "of steps",
                    file=ctx.path, line=call.node.lineno,
                )


def _warmup_steps(script: Script, call: Call) -> tuple[int | None, str]:
    """The warm-up length in optimizer steps a call sets, when it is a literal (or a name assigned one) and counts
    steps."""
    if "schedule_with_warmup" in call.last or call.last == "TrainingArguments":
        keyword = call.keyword("num_warmup_steps") or call.keyword("warmup_steps")
        node = keyword.value if keyword is not None else (call.node.args[1] if "schedule" in call.last and len(call.node.args) > 1 else None)
        return _count(script, node, call.node), f"`{call.name}(...)`"
    if call.last == "LinearLR" and _ramps_up(call) and _stepped_per_batch(script, call):
        keyword = call.keyword("total_iters")
        node = keyword.value if keyword is not None else (call.node.args[3] if len(call.node.args) > 3 else None)
        steps = 5 if node is None else _count(script, node, call.node)  # LinearLR's default total_iters
        return steps, f"`{call.name}(...)` stepped every batch"
    return None, ""


def _count(script: Script, node: ast.expr | None, use: ast.AST) -> int | None:
    """An integer literal, or a name last assigned one (`warmup_steps = 5`)."""
    if isinstance(node, ast.Name):
        assigned = script.assigned_before(node.id, use)
        node = assigned if isinstance(assigned, ast.expr) else None
    value = literal(node) if node is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ramps_up(call: Call) -> bool:
    keyword = call.keyword("start_factor")
    node = keyword.value if keyword is not None else (call.node.args[1] if len(call.node.args) > 1 else None)
    value = 1 / 3 if node is None else literal(node)  # LinearLR's default start_factor
    return isinstance(value, (int, float)) and value < 1


def _stepped_per_batch(script: Script, scheduler: Call) -> bool:
    """Whether the scheduler (the name it is assigned to, or the SequentialLR that wraps it) is stepped in the
    same loop as an optimizer, once per batch, or handed to Lightning with `"interval": "step"`."""
    names = _scheduler_names(script, scheduler.node)
    scope = script.scope_of(scheduler.node)
    if _lightning_per_step(scope, names, scheduler.node):
        return True
    for call in script.calls:
        func = call.func
        if not (isinstance(func, ast.Attribute) and func.attr == "step" and dotted(func.value) in names):
            continue
        if script.scope_of(call) is not scope:
            continue
        loop = next((a for a in script.ancestors(call) if isinstance(a, (ast.For, ast.AsyncFor, ast.While))), None)
        if loop is None:
            continue
        for other in ast.walk(loop):
            if isinstance(other, ast.Call) and isinstance(other.func, ast.Attribute) and other.func.attr == "step":
                if dotted(other.func.value) not in names and stepped_optimizer(_as_call(script, other)) is not None:
                    inner = next((a for a in script.ancestors(other) if isinstance(a, (ast.For, ast.AsyncFor, ast.While))), None)
                    if inner is loop:
                        return True
    return False


def _lightning_per_step(scope: ast.AST, names: set[str], scheduler: ast.Call) -> bool:
    """`{"scheduler": sched, "interval": "step"}` in the function that builds the scheduler (Lightning's
    configure_optimizers)."""
    for node in ast.walk(scope):
        if not isinstance(node, ast.Dict):
            continue
        entries = {literal(k): v for k, v in zip(node.keys, node.values) if k is not None}
        target = entries.get("scheduler")
        if target is not None and (dotted(target) in names or target is scheduler) and literal(entries.get("interval")) == "step":
            return True
    return False


def _scheduler_names(script: Script, node: ast.Call) -> set[str]:
    """The names the scheduler is bound to: `warmup = LinearLR(...)`, and a `SequentialLR(opt, [warmup, ...])`
    built from it."""
    names: set[str] = set()
    parent = script.parent(node)
    if isinstance(parent, ast.Assign):
        names.update(n for n in (dotted(t) for t in parent.targets) if n)
    for call in script.calls_named.get("SequentialLR", []) + script.calls_named.get("ChainedScheduler", []):
        members = {dotted(e) for a in call.args for e in (a.elts if isinstance(a, (ast.List, ast.Tuple)) else [])}
        inline = any(e is node for a in call.args for e in (a.elts if isinstance(a, (ast.List, ast.Tuple)) else []))
        if names & members or inline:
            outer = script.parent(call)
            if isinstance(outer, ast.Assign):
                names.update(n for n in (dotted(t) for t in outer.targets) if n)
    return names


def _as_call(script: Script, node: ast.Call) -> Call:
    name = dotted(node.func)
    return Call(node, name, script.imports.resolve(name))
