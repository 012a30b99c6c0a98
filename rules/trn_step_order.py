"""TRN004-TRN005: the order of backward, zero_grad and step in a training loop, read from the source."""

from __future__ import annotations

import ast
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.rule import Rule, SourceContext, register
from auditor_rules._script import FUNCTIONS, Script
from auditor_rules._training_code import Call, calls_in, dotted, file_imports, literal, scopes

OPTIMIZER_STEP = "step"


def is_backward(call: Call) -> bool:
    """`loss.backward()` / `scaler.scale(loss).backward()`; not `accelerator.backward(loss)` (Accelerate scales
    the loss for accumulation itself) nor `torch.autograd.backward` of several tensors."""
    func = call.node.func
    return isinstance(func, ast.Attribute) and func.attr == "backward" and not (call.receiver or "").endswith("accelerator")


def stepped_optimizer(call: Call) -> str | None:
    """The optimizer a call steps: `opt` for `opt.step()` and for `scaler.step(opt)`; None for a scheduler's or
    anything else's step."""
    if call.last != OPTIMIZER_STEP or call.receiver is None:
        return None
    receiver = call.receiver
    if "scaler" in receiver.rpartition(".")[2].lower():
        return dotted(call.node.args[0]) if call.node.args else None
    if "sched" in receiver.lower() or "lr" == receiver.rpartition(".")[2].lower():
        return None
    return receiver


def optimizer_models(tree: ast.Module) -> dict[str, set[str]]:
    """`opt = AdamW(model.parameters(), ...)` gives {"opt": {"model"}}: whose parameters each optimizer owns
    (also through `list(...)`, `filter(...)`, `[*a.parameters(), *b.parameters()]`)."""
    owners: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.value, ast.Call)):
            continue
        target, callee = dotted(node.targets[0]), (dotted(node.value.func) or "").rpartition(".")[2]
        if not target or not callee[:1].isupper():
            continue
        models = {dotted(n.func.value) for n in ast.walk(node.value) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("parameters", "named_parameters")}
        models.discard(None)
        if models:
            owners[target] = models  # type: ignore[assignment]
    return owners


@register
class ZeroGradBeforeStep(Rule):
    """
    ## What it does
    Flags `optimizer.zero_grad()` (or `model.zero_grad()`) called after `loss.backward()` and before the
    `optimizer.step()` that was meant to use those gradients, in the same training step.

    ## Why is this bad?
    `zero_grad` clears (or sets to None) the gradients `backward` just computed: the step that follows sees
    zero or no gradients and the model does not learn from the batch, with no error (momentum and weight
    decay still move the weights, so the loss even changes a little). The order is zero_grad, backward, step,
    or backward, step, zero_grad.

    ## Example
    ```python
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    ```

    ## Use instead
    ```python
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    ```

    ## Fix
    No automatic fix: move `zero_grad()` before `backward()` (or after `step()`).

    ## References
    PyTorch documentation, "Optimizing Model Parameters" tutorial (the optimization loop: zero_grad, backward,
    step).
    Zhang et al., "An Empirical Study on Program Failures of Deep Learning Jobs", ICSE 2020.
    """

    code = "TRN005"
    name = "zero-grad-after-backward"
    severity = Severity.ERROR
    summary = "source: zero_grad() between backward() and the optimizer's step() wipes the gradients"
    scope = "source"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        if "zero_grad" not in ctx.text:
            return
        imports = file_imports(ctx)
        owners = optimizer_models(ctx.tree)
        for statements in scopes(ctx.tree):
            calls = calls_in(statements, imports)
            for index, call in enumerate(calls):
                if call.last != "zero_grad" or call.receiver is None:
                    continue
                if not _after_backward(calls[:index]):
                    continue
                step = _next_step(calls[index + 1:])
                if step is not None and _covers(call.receiver, step, owners):
                    backward = next(c for c in reversed(calls[:index]) if is_backward(c))
                    yield self.finding(
                        f"`{call.name}()` runs after `backward()` (line {backward.node.lineno}) and before "
                        f"`{step.name}(...)` (line {step.node.lineno}): it clears the gradients the step was to "
                        "apply; call zero_grad() before backward() or after step()",
                        file=ctx.path, line=call.node.lineno,
                    )


def _after_backward(before: list[Call]) -> bool:
    """Whether the nearest of backward / step / zero_grad before this point is a backward."""
    for call in reversed(before):
        if is_backward(call):
            return True
        if stepped_optimizer(call) is not None or call.last == "zero_grad":
            return False
    return False


def _next_step(after: list[Call]) -> Call | None:
    """The next optimizer step, unless a backward comes first (then the zero_grad prepared that one)."""
    for call in after:
        if is_backward(call):
            return None
        if stepped_optimizer(call) is not None:
            return call
    return None


def _covers(zeroed: str, step: Call, owners: dict[str, set[str]]) -> bool:
    """Whether zeroing `zeroed`'s gradients clears those the step applies: the same optimizer, or the model
    whose parameters it owns (or the only optimizer of the file, when its parameters are not known)."""
    optimizer = stepped_optimizer(step)
    if zeroed == optimizer:
        return True
    models = owners.get(optimizer or "")
    if models is not None:
        return zeroed in models
    return zeroed not in owners and len(owners) <= 1


@register
class UnscaledGradientAccumulation(Rule):
    """
    ## What it does
    Flags gradient accumulation whose loss is not divided by the number of accumulated steps: a loop that calls
    `loss.backward()` on every batch but `optimizer.step()` only every k batches
    (`if (i + 1) % accumulation_steps == 0:`), where the loss is never divided (`loss / accumulation_steps`).

    ## Why is this bad?
    `backward()` adds into `.grad`: after k batches the gradient is the *sum* of k batch gradients, k times the
    gradient of the large batch the accumulation stands for. With SGD the effective learning rate is k times
    too high; a gradient-clipping threshold is compared with a norm k times too large; weight decay and Adam's
    epsilon are weighted wrongly against the gradient. Results stop matching the same run without accumulation.

    ## Example
    ```python
    for i, (x, y) in enumerate(loader):
        loss = criterion(model(x), y)
        loss.backward()
        if (i + 1) % accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
    ```

    ## Use instead
    ```python
    for i, (x, y) in enumerate(loader):
        loss = criterion(model(x), y) / accumulation_steps
        loss.backward()
        if (i + 1) % accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
    ```

    ## Fix
    No automatic fix: divide the loss by the accumulation steps before `backward()` (Accelerate's
    `accelerator.backward` and Lightning's `accumulate_grad_batches` do it for you).

    ## References
    Hugging Face Accelerate documentation, "Performing gradient accumulation".
    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017 (the linear scaling of the
    learning rate with the batch).
    """

    code = "TRN004"
    name = "unscaled-gradient-accumulation"
    severity = Severity.WARNING
    summary = "source: gradients accumulated over k batches with the loss not divided by k"
    scope = "source"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        if "%" not in ctx.text or "backward" not in ctx.text:
            return
        script = Script.of(ctx)
        imports = file_imports(ctx)
        for loop in (n for n in script.nodes if isinstance(n, (ast.For, ast.AsyncFor, ast.While))):
            gate = _accumulation_gate(loop, imports)
            if gate is None:
                continue
            condition, every = gate
            calls = [c for c in calls_in(loop.body, imports) if _nearest_loop(script, c.node) is loop]
            if any(stepped_optimizer(c) is not None and not _inside(script, c.node, condition) for c in calls):
                continue  # a step on every batch consumes those backwards (a WGAN critic; the generator every n)
            for call in calls:
                if not is_backward(call) or _inside(script, call.node, condition):
                    continue
                if _scaled(script, call, loop):
                    continue
                yield self.finding(
                    f"`backward()` runs on every batch but the optimizer steps once every `{every}` batches (line "
                    f"{condition.lineno}) and the loss is not divided by `{every}`: the accumulated gradient is the sum "
                    f"of `{every}` batches' gradients; divide the loss by `{every}` before backward()",
                    file=ctx.path, line=call.node.lineno,
                )


def _accumulation_gate(loop: ast.AST, imports) -> tuple[ast.If, str] | None:
    """The `if (i + 1) % k == 0:` of a loop's body whose block steps an optimizer, and how k is written."""
    for node in _own_statements(loop):
        if not isinstance(node, ast.If):
            continue
        modulo = next((m for m in ast.walk(node.test) if isinstance(m, ast.BinOp) and isinstance(m.op, ast.Mod)), None)
        if modulo is None or literal(modulo.right) == 1:
            continue
        if any(stepped_optimizer(c) is not None for c in calls_in(node.body, imports)):
            return node, ast.unparse(modulo.right)
    return None


def _own_statements(loop: ast.AST) -> Iterator[ast.AST]:
    """The statements of a loop's body, nested blocks included, not those of inner loops or functions."""
    stack = list(getattr(loop, "body", []))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While, *FUNCTIONS, ast.ClassDef)):
            continue
        yield node
        stack.extend(n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt))


def _inside(script: Script, node: ast.AST, block: ast.AST) -> bool:
    return any(a is block for a in script.ancestors(node))


def _nearest_loop(script: Script, node: ast.AST) -> ast.AST | None:
    return next((a for a in script.ancestors(node) if isinstance(a, (ast.For, ast.AsyncFor, ast.While))), None)


def _scaled(script: Script, backward: Call, loop: ast.AST) -> bool:
    """Whether the loss reaching backward() is divided (or multiplied) by something: in the backward's own
    expression, or in an assignment to the loss's name in the loop (or the function) before it."""
    target = backward.node.func.value  # type: ignore[attr-defined]
    if isinstance(target, ast.Call) and target.args:  # scaler.scale(loss).backward()
        target = target.args[0]
    if _divides(target):
        return True
    name = dotted(target)
    if name is None:
        return True  # not followed: no claim
    function = script.function_of(loop) or script.tree
    for node in ast.walk(function):
        if isinstance(node, ast.AugAssign) and dotted(node.target) == name and isinstance(node.op, (ast.Div, ast.Mult)):
            return True
        if isinstance(node, ast.Assign) and any(dotted(t) == name for t in node.targets) and _divides(node.value):
            return True
    return False


def _divides(expr: ast.AST) -> bool:
    """`loss / k`, `loss * scale`, `(a + b) / k`, `a / k + b / k`, `loss.div(k)`: the value itself is scaled (not
    some argument inside it, such as `model(x / 255)`)."""
    if isinstance(expr, ast.BinOp):
        if isinstance(expr.op, (ast.Div, ast.Mult)):
            return True
        return isinstance(expr.op, (ast.Add, ast.Sub)) and _divides(expr.left) and _divides(expr.right)
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in ("div", "div_", "mul", "mul_", "true_divide")
