"""TRN006-TRN007: evaluation loops that leave the model in training mode or record gradients, read from the source."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.rule import Rule, SourceContext, register
from auditor_rules._script import EVALUATION_NAME, Script
from auditor_rules._training_code import calls_in, dotted, file_imports
from auditor_rules._values import built, layer_in

# What an evaluation loop iterates: `val_loader`, `test_dl`, `valid_dataloader`, `dataloaders["val"]`.
EVALUATION_DATA = re.compile(
    r"(^|_)(val|valid|validation|test|testing|eval|evaluation|dev|holdout)(_|$|loader|dataloader|dl|data|set|dataset|iter|batches)",
    re.IGNORECASE,
)
WRAPPERS = frozenset({"enumerate", "tqdm", "iter", "zip", "track", "progress_bar"})
MODEL_NAME = re.compile(r"(^|_)(model|net|network|classifier|encoder|decoder|module|backbone)s?(_|$)|^(model|net)\w*$", re.IGNORECASE)


@dataclass
class EvaluationLoop:
    """A loop over evaluation data that calls a model and never calls backward()."""

    loop: ast.For | ast.AsyncFor
    function: ast.FunctionDef | ast.AsyncFunctionDef | None
    model: str  # the model as the loop calls it
    data: str  # what it iterates, as written
    call: ast.Call  # the model's call


def evaluation_loops(ctx: SourceContext) -> list[EvaluationLoop]:
    if "evaluation_loops" not in ctx.shared:
        ctx.shared["evaluation_loops"] = list(_evaluation_loops(ctx))
    return ctx.shared["evaluation_loops"]


def _evaluation_loops(ctx: SourceContext) -> Iterator[EvaluationLoop]:
    script = Script.of(ctx)
    imports = file_imports(ctx)
    for loop in (n for n in script.nodes if isinstance(n, (ast.For, ast.AsyncFor))):
        function = script.function_of(loop)
        data = _iterated(loop.iter)
        if data is None:
            continue
        named = bool(EVALUATION_DATA.search(_last_name(data)))
        in_evaluation_function = function is not None and bool(EVALUATION_NAME.search(function.name))
        if not (named or (in_evaluation_function and "loader" in data.lower())):
            continue
        calls = calls_in(loop.body, imports)
        if any(c.node.func.attr in ("backward", "step") for c in calls if isinstance(c.node.func, ast.Attribute)):
            continue  # it trains (a loop over a test set that trains is another matter)
        model = next((c for c in calls if c.name and _is_model(script, c.name, c.node)), None)
        if model is not None and model.name is not None:
            yield EvaluationLoop(loop, function, model.name, data, model.node)


def _iterated(expr: ast.expr) -> str | None:
    """The data a for-loop iterates, through `enumerate(...)`, `tqdm(...)`, `zip(...)`: `val_loader`,
    `loaders["val"]`."""
    while isinstance(expr, ast.Call) and (dotted(expr.func) or "").rpartition(".")[2] in WRAPPERS and expr.args:
        expr = expr.args[0]
    if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Constant) and isinstance(expr.slice.value, str):
        return f"{dotted(expr.value) or '?'}[{expr.slice.value!r}]"
    return dotted(expr)


def _last_name(data: str) -> str:
    if "[" in data:
        return data.split("[", 1)[1].strip("]'\"")
    return data.rpartition(".")[2]


def _is_model(script: Script, name: str, call: ast.Call) -> bool:
    """A call of a model: a local nn.Module class's instance, or a name that says so (`model`, `self.net`)."""
    if name.startswith("self.") and name.count(".") > 1:
        return False
    if MODEL_NAME.search(name.rpartition(".")[2]):
        return True
    found = built(script, call.func, call)
    return found is not None and found.cls is not None


def mode_before(script: Script, loop: ast.AST) -> str | None:
    """"eval" or "train": an `.eval()` in the loop's body, else the last `.eval()` / `.train(...)` call (of any
    module) before the loop in its function, else what every call site of the function sets before calling it."""
    if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "eval" for n in ast.walk(loop)):
        return "eval"
    function = script.function_of(loop)
    scope = function or script.tree
    mode = _last_mode(script, scope, loop)
    if mode is not None or function is None:
        return mode
    modes = {_last_mode(script, script.scope_of(site), site) for site in script.calls_named.get(function.name, ())}
    return modes.pop() if len(modes) == 1 else None


def _last_mode(script: Script, scope: ast.AST, before: ast.AST) -> str | None:
    limit = (before.lineno, before.col_offset)
    found: tuple[tuple[int, int], str] | None = None
    for call in script.calls:
        func = call.func
        if not (isinstance(func, ast.Attribute) and func.attr in ("eval", "train")) or script.scope_of(call) is not scope:
            continue
        position = (call.lineno, call.col_offset)
        if position >= limit or (found is not None and position < found[0]):
            continue
        if func.attr == "eval" or (call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value is False):
            found = (position, "eval")
        elif not any(isinstance(k.value, ast.Constant) and k.value.value is False for k in call.keywords):
            found = (position, "train")
        else:
            found = (position, "eval")
    return found[1] if found is not None else None


@register
class ValidationInTrainMode(Rule):
    """
    ## What it does
    Flags a loop over validation or test data (`for x, y in val_loader:`, a loop over a loader in a function
    named `validate`/`evaluate`/`test`) that calls the model and never calls backward, when the model was not
    put in eval mode before it: no `model.eval()` (or `.train(False)`) since the last `.train()` in that
    function, nor before each call of the function.

    ## Why is this bad?
    In training mode dropout still drops units and BatchNorm normalizes with the statistics of the evaluation
    batch and updates its running statistics with them: the reported accuracy is noisier and lower than the
    model's, it depends on the batch size, and the evaluation data leaks into the BatchNorm statistics the
    model keeps.

    ## Example
    ```python
    def validate(model, val_loader):
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        return correct
    ```

    ## Use instead
    ```python
    def validate(model, val_loader):
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        return correct
    ```

    ## Fix
    No automatic fix: call `model.eval()` before evaluating (and `model.train()` before training again).

    ## References
    PyTorch documentation, `torch.nn.Module.eval` ("This has an effect only on certain modules ... Dropout,
    BatchNorm").
    Ioffe, Szegedy, "Batch Normalization", ICML 2015 (inference uses the population statistics).
    """

    code = "TRN006"
    name = "validation-in-train-mode"
    severity = Severity.WARNING
    summary = "source: an evaluation loop run without model.eval() (dropout and BatchNorm stay in training mode)"
    scope = "source"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        script = Script.of(ctx)
        for found in evaluation_loops(ctx):
            if mode_before(script, found.loop) == "eval" or not _behaves_differently(script, found):
                continue
            yield self.finding(
                f"the loop over `{found.data}` evaluates `{found.model}` without `model.eval()` before it: dropout "
                "stays active and BatchNorm uses (and updates) this data's batch statistics; call .eval() first",
                file=ctx.path, line=found.loop.lineno,
            )


def _behaves_differently(script: Script, found: EvaluationLoop) -> bool:
    """Whether the model may hold layers that train() and eval() run differently: True unless its code is read
    (here or in a local module) and names no dropout, BatchNorm or other train-mode layer."""
    model = built(script, found.call.func, found.call)
    return model is None or layer_in(model, TRAIN_MODE_LAYERS, keyword="dropout") is not None


TRAIN_MODE_LAYERS = re.compile(r"dropout|batchnorm|batch_norm|instancenorm|drop_?path|stochastic_?depth|droplayer|\bbn\d*\b", re.IGNORECASE)


@register
class ValidationWithGradients(Rule):
    """
    ## What it does
    Flags a loop over validation or test data that calls the model and never calls backward, outside any
    `torch.no_grad()` / `torch.inference_mode()` block (or such a decorator on its function or on every function
    that calls it).

    ## Why is this bad?
    Autograd records every operation of the forward pass for a backward that never comes: the activations of
    the whole evaluation batch stay in memory (often several times the memory of the forward itself) and every
    op pays the bookkeeping. Evaluation runs slower and with smaller batches than it could, or runs out of
    memory where training did not.

    ## Example
    ```python
    model.eval()
    for x, y in test_loader:
        correct += (model(x).argmax(1) == y).sum().item()
    ```

    ## Use instead
    ```python
    model.eval()
    with torch.inference_mode():
        for x, y in test_loader:
            correct += (model(x).argmax(1) == y).sum().item()
    ```

    ## Fix
    No automatic fix: wrap the evaluation in `torch.no_grad()` or `torch.inference_mode()` (or decorate the
    function with it).

    ## References
    PyTorch documentation, "Autograd mechanics: Locally disabling gradient computation".
    """

    code = "TRN007"
    name = "validation-with-gradients"
    severity = Severity.INFO
    summary = "source: an evaluation loop that records gradients (no torch.no_grad() / inference_mode())"
    scope = "source"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        script = Script.of(ctx)
        for found in evaluation_loops(ctx):
            if _without_grad(script, found):
                continue
            yield self.finding(
                f"the loop over `{found.data}` evaluates `{found.model}` with autograd recording every op: wrap it "
                "in `torch.no_grad()` or `torch.inference_mode()`",
                file=ctx.path, line=found.loop.lineno,
            )


def _without_grad(script: Script, found: EvaluationLoop) -> bool:
    """The loop, or the model call inside it, runs without gradients (here, or at every call of its function)."""
    if script.without_grad(found.loop):
        return True
    inner = (n for n in ast.walk(found.loop) if isinstance(n, (ast.With, ast.AsyncWith)))
    if any(script.disables_grad(item.context_expr) for n in inner for item in n.items):
        return True
    if found.function is None:
        return False
    sites = script.calls_named.get(found.function.name, [])
    return bool(sites) and all(script.without_grad(site) for site in sites)
