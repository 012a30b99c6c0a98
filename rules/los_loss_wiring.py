"""LOS001-LOS004: what a classification loss is fed, read from the source (no import, no torch).

`nn.CrossEntropyLoss`, `nn.NLLLoss` and `nn.BCEWithLogitsLoss` (and their functional forms) each expect one kind
of input; the rules follow the loss's input back through the script (assignments, `self.attr`, parameters, the
model called and its `forward`, in this file or in a local module it imports) to the op that made it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.rule import Rule, SourceContext, register
from auditor_rules._script import Script
from auditor_rules._training_code import dotted
from auditor_rules._values import LOG_SOFTMAX, LOGITS, SIGMOID, SOFTMAX, Held, built, held, torch_name

# functional name -> module class name
LOSSES = {
    "cross_entropy": "CrossEntropyLoss",
    "nll_loss": "NLLLoss",
    "binary_cross_entropy_with_logits": "BCEWithLogitsLoss",
}
WHAT = {SOFTMAX: "softmax probabilities", SIGMOID: "sigmoid probabilities", LOG_SOFTMAX: "log-probabilities", LOGITS: "raw scores"}


@dataclass
class LossCall:
    """A loss applied in the script, and what its input holds."""

    loss: str  # "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss"
    call: ast.Call
    written: str  # how the script names it, for messages
    input: Held


def loss_calls(ctx: SourceContext) -> list[LossCall]:
    """Every loss call of the file whose input is known, in source order (once per file: four rules ask)."""
    if "loss_calls" not in ctx.shared:
        ctx.shared["loss_calls"] = list(_loss_calls(ctx))
    return ctx.shared["loss_calls"]


def _loss_calls(ctx: SourceContext) -> Iterator[LossCall]:
    if not any(word in ctx.text for word in (*LOSSES, *LOSSES.values())):
        return
    script = Script.of(ctx)
    holders = _loss_holders(script)
    for node in script.calls:
        loss = _loss_of(script, node, holders)
        if loss is None:
            continue
        argument = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "input"), None)
        found = held(script, argument, node) if argument is not None else None
        if found is not None:
            yield LossCall(loss[0], node, loss[1], found)


def _loss_holders(script: Script) -> set[str]:
    """The last part of every name a loss module is assigned to (`criterion`, `self.loss_fct`), and every
    parameter name (a criterion passed in)."""
    names: set[str] = set()
    for node in script.nodes:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            callee = dotted(node.value.func) or ""
            if callee.rpartition(".")[2] in LOSSES.values():
                names.update((dotted(t) or "").rpartition(".")[2] for t in node.targets)
        elif isinstance(node, ast.arguments):
            names.update(a.arg for a in (*node.posonlyargs, *node.args, *node.kwonlyargs))
    return names


def _loss_of(script: Script, call: ast.Call, holders: set[str]) -> tuple[str, str] | None:
    name = dotted(call.func)
    resolved = torch_name(script, name) or ""
    last = resolved.rpartition(".")[2]
    if resolved.startswith("torch.nn.functional.") and last in LOSSES:
        return LOSSES[last], f"{name}(...)"
    inline = isinstance(call.func, ast.Call) and (dotted(call.func.func) or "").rpartition(".")[2] in LOSSES.values()
    if inline or (name is not None and name.rpartition(".")[2] in holders):
        module = built(script, call.func, call)
        if module is not None and module.is_torch and module.last in LOSSES.values():
            return module.last, f"{name}(...)" if name else f"{module.last}()(...)"
    return None


def where(ctx: SourceContext, found: Held) -> str:
    """Where the input got that way: `line 12`, `models.py:12` in another file, or the model whose forward
    ends so."""
    line = found.at.line
    place = f"line {line}" if found.at.script.path == ctx.path else f"{found.at.script.path}:{line}"
    if found.model is None:
        return f"from {place}"
    return f"the output of `{found.model}`, whose forward ends in {_OP[found.kind]} at {place}"


_OP = {SOFTMAX: "a softmax", SIGMOID: "a sigmoid", LOG_SOFTMAX: "a log_softmax", LOGITS: "a linear or conv layer"}


class _LossWiring(Rule):
    scope = "source"
    loss: frozenset[str] = frozenset()
    inputs: frozenset[str] = frozenset()

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        for found in loss_calls(ctx):
            if found.loss in self.loss and found.input.kind in self.inputs:
                yield self.finding(self.message(ctx, found), file=ctx.path, line=found.call.lineno)

    def message(self, ctx: SourceContext, found: LossCall) -> str:
        raise NotImplementedError


@register
class SoftmaxBeforeCrossEntropy(_LossWiring):
    """
    ## What it does
    Flags a cross-entropy loss (`nn.CrossEntropyLoss`, `F.cross_entropy`) fed probabilities: the output of a
    softmax or a sigmoid, applied in the training code (`criterion(F.softmax(logits, 1), y)`) or at the end of
    the model's `forward` whose output the script passes to the loss (found in the same file or in the local
    module the model is imported from, through the `self.softmax` or `nn.Sequential(..., nn.Softmax(1))` it
    uses). A `forward` that returns probabilities only in eval mode, on some of its paths, is not flagged.

    ## Why is this bad?
    `CrossEntropyLoss` expects raw scores (logits) and applies `log_softmax` itself. Fed probabilities, it
    computes a softmax of a softmax: its inputs live in [0, 1], so the loss can never go below
    log(1 + (C-1)/e) and its gradient shrinks as the model grows confident. Training still runs and the loss
    still falls, slowly, to a worse model, with nothing to say why (the "double softmax" mistake that UMLAUT and
    NeuraLint check for).

    ## Example
    ```python
    def forward(self, x):
        return F.softmax(self.fc(x), dim=1)
    ...
    loss = nn.CrossEntropyLoss()(model(x), y)
    ```

    ## Use instead
    ```python
    def forward(self, x):
        return self.fc(x)  # logits; apply softmax where probabilities are needed (inference, metrics)
    ...
    loss = nn.CrossEntropyLoss()(model(x), y)
    ```

    ## Fix
    No automatic fix: return logits from the model and apply the softmax only where probabilities are used,
    or, to keep a model that returns probabilities, train on `F.nll_loss(torch.log(probs + eps), y)` (less
    stable than logits).

    ## References
    PyTorch documentation, `torch.nn.CrossEntropyLoss` ("The input is expected to contain the unnormalized
    logits for each class").
    Schoop, Huang, Hartmann, "UMLAUT: Debugging Deep Learning Programs using Program Structure, Model Behavior,
    and Error Messages", CHI 2021.
    Nikanjam et al., "Automatic Fault Detection for Deep Learning Programs Using Graph Transformations"
    (NeuraLint), TOSEM 2021.
    """

    code = "LOS001"
    name = "softmax-before-cross-entropy"
    severity = Severity.ERROR
    summary = "source: CrossEntropyLoss fed probabilities (a softmax or sigmoid output) instead of logits"
    loss = frozenset({"CrossEntropyLoss"})
    inputs = frozenset({SOFTMAX, SIGMOID})

    def message(self, ctx: SourceContext, found: LossCall) -> str:
        return (
            f"`{found.written}` is fed {WHAT[found.input.kind]} ({where(ctx, found.input)}); CrossEntropyLoss "
            "applies log_softmax itself and expects logits: drop the "
            f"{'softmax' if found.input.kind == SOFTMAX else 'sigmoid'} before the loss"
        )


@register
class SigmoidBeforeBceWithLogits(_LossWiring):
    """
    ## What it does
    Flags `nn.BCEWithLogitsLoss` / `F.binary_cross_entropy_with_logits` fed probabilities: the output of a
    sigmoid (or softmax), applied in the training code or at the end of the model's `forward`.

    ## Why is this bad?
    The "with logits" loss applies the sigmoid itself (in a numerically stable form). Fed a sigmoid's output, it
    computes sigmoid(sigmoid(x)), which lies in [0.5, 0.73]: a target of 0 can never be predicted below 0.5, the
    loss has a floor far above zero, and the gradient is squashed twice. The model trains, badly.

    ## Example
    ```python
    probs = torch.sigmoid(model(x))
    loss = F.binary_cross_entropy_with_logits(probs, y)
    ```

    ## Use instead
    ```python
    logits = model(x)
    loss = F.binary_cross_entropy_with_logits(logits, y)
    ```

    ## Fix
    No automatic fix: pass the logits, or keep the sigmoid and use `nn.BCELoss` (less stable in float16).

    ## References
    PyTorch documentation, `torch.nn.BCEWithLogitsLoss` ("This loss combines a Sigmoid layer and the BCELoss in
    one single class").
    Nikanjam et al., "Automatic Fault Detection for Deep Learning Programs Using Graph Transformations"
    (NeuraLint: wrong loss inputs), TOSEM 2021.
    """

    code = "LOS002"
    name = "sigmoid-before-bce-with-logits"
    severity = Severity.ERROR
    summary = "source: BCEWithLogitsLoss fed a sigmoid's output instead of logits"
    loss = frozenset({"BCEWithLogitsLoss"})
    inputs = frozenset({SIGMOID, SOFTMAX})

    def message(self, ctx: SourceContext, found: LossCall) -> str:
        return (
            f"`{found.written}` is fed {WHAT[found.input.kind]} ({where(ctx, found.input)}); BCEWithLogitsLoss "
            "applies the sigmoid itself: pass the logits (or use BCELoss on probabilities)"
        )


@register
class NllWithoutLogSoftmax(_LossWiring):
    """
    ## What it does
    Flags `nn.NLLLoss` / `F.nll_loss` fed something other than log-probabilities: softmax or sigmoid
    probabilities, or the raw output of a linear or conv layer (the model's `forward` ends in one, or the script
    applies a softmax before the loss).

    ## Why is this bad?
    `NLLLoss` only picks `-input[target]`: it expects `log_softmax` outputs. On probabilities it minimizes
    `-p[target]`, bounded in [-1, 0] with vanishing gradients, and on raw scores it is unbounded below: the loss
    falls forever by inflating the target logit, without ever normalizing against the other classes.

    ## Example
    ```python
    out = F.softmax(self.fc(x), dim=1)
    loss = F.nll_loss(out, y)
    ```

    ## Use instead
    ```python
    out = F.log_softmax(self.fc(x), dim=1)
    loss = F.nll_loss(out, y)  # or F.cross_entropy(self.fc(x), y)
    ```

    ## Fix
    No automatic fix: use `log_softmax` before `NLLLoss`, or give the logits to `CrossEntropyLoss`.

    ## References
    PyTorch documentation, `torch.nn.NLLLoss` ("The input given through a forward call is expected to contain
    log-probabilities of each class").
    Nikanjam et al., "Automatic Fault Detection for Deep Learning Programs Using Graph Transformations"
    (NeuraLint: wrong loss inputs), TOSEM 2021.
    """

    code = "LOS003"
    name = "nll-without-log-softmax"
    severity = Severity.ERROR
    summary = "source: NLLLoss fed probabilities or raw scores instead of log-probabilities"
    loss = frozenset({"NLLLoss"})
    inputs = frozenset({SOFTMAX, SIGMOID, LOGITS})

    def message(self, ctx: SourceContext, found: LossCall) -> str:
        return (
            f"`{found.written}` is fed {WHAT[found.input.kind]} ({where(ctx, found.input)}); NLLLoss expects "
            "log-probabilities: apply log_softmax first, or use CrossEntropyLoss on the logits"
        )


@register
class LogSoftmaxBeforeCrossEntropy(_LossWiring):
    """
    ## What it does
    Flags a cross-entropy loss fed log-probabilities: the output of `log_softmax` (or `nn.LogSoftmax` at the
    end of the model's `forward`).

    ## Why is this bad?
    It computes the same loss: `log_softmax` is idempotent (its outputs already have a log-sum-exp of zero), so
    `CrossEntropyLoss(log_softmax(x))` equals `CrossEntropyLoss(x)` and training is unaffected. It is reported
    as information because it usually means the two conventions were mixed (a model written for `NLLLoss`
    trained with `CrossEntropyLoss`), which the next edit can turn into a real mismatch, and the normalization is
    computed twice.

    ## Example
    ```python
    loss = F.cross_entropy(F.log_softmax(logits, dim=1), y)
    ```

    ## Use instead
    ```python
    loss = F.cross_entropy(logits, y)  # or F.nll_loss(F.log_softmax(logits, dim=1), y)
    ```

    ## Fix
    No automatic fix: drop the `log_softmax`, or pair it with `NLLLoss`.

    ## References
    PyTorch documentation, `torch.nn.CrossEntropyLoss` ("equivalent to applying LogSoftmax on an input,
    followed by NLLLoss").
    """

    code = "LOS004"
    name = "log-softmax-before-cross-entropy"
    severity = Severity.INFO
    summary = "source: CrossEntropyLoss fed log_softmax outputs (equivalent, but the conventions are mixed)"
    loss = frozenset({"CrossEntropyLoss"})
    inputs = frozenset({LOG_SOFTMAX})

    def message(self, ctx: SourceContext, found: LossCall) -> str:
        return (
            f"`{found.written}` is fed log-probabilities ({where(ctx, found.input)}); CrossEntropyLoss applies "
            "log_softmax itself (the result is the same): drop the log_softmax, or use NLLLoss"
        )
