"""NRM005-NRM006: BatchNorm in models that the training code uses in a way batch statistics cannot serve,
read from the source (the script and the model's class, in the same file or a local module)."""

from __future__ import annotations

import ast
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.rule import Rule, SourceContext, register
from auditor_rules._script import Located, Script
from auditor_rules._training_code import dotted, literal
from auditor_rules._values import BATCH_NORM, UNKNOWN, Built, built, layer_in, torch_name


def _place(ctx: SourceContext, where: Located) -> str:
    return f"line {where.line}" if where.script.path == ctx.path else f"{where.script.path}:{where.line}"


def _finding_line(ctx: SourceContext, norm: Located, fallback: int) -> int:
    """The BatchNorm's line when this file defines it (where the user edits), else the training code's line."""
    return norm.line if norm.script.path == ctx.path else fallback


@register
class BatchNormInGradientPenaltyCritic(Rule):
    """
    ## What it does
    Flags a critic (discriminator) that normalizes with BatchNorm and is trained with a gradient penalty: the
    script computes `torch.autograd.grad(outputs=critic(x), inputs=x, create_graph=True)`, the penalty of
    WGAN-GP, DRAGAN or R1, and the critic's class (in the same file or the local module it is imported from)
    builds a BatchNorm layer.

    ## Why is this bad?
    The penalty constrains the norm of the gradient of the critic's output with respect to *each* input
    separately. BatchNorm makes every output depend on the whole batch, so that per-sample gradient is not the
    one the penalty is meant to bound: the penalty is no longer valid and training is unstable or fails to
    converge. Gulrajani et al. drop BatchNorm from the critic for this reason and recommend layer
    normalization (or none) instead.

    ## Example
    ```python
    critic = nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2), ...)
    grads = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)[0]
    penalty = ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()
    ```

    ## Use instead
    ```python
    critic = nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), nn.GroupNorm(1, 64), nn.LeakyReLU(0.2), ...)  # a LayerNorm
    ```

    ## Fix
    No automatic fix: replace the critic's BatchNorm by LayerNorm (`nn.GroupNorm(1, C)` on feature maps),
    InstanceNorm, or no normalization.

    ## References
    Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017, section 4 ("No critic batch
    normalization").
    Mescheder, Geiger, Nowozin, "Which Training Methods for GANs do actually Converge?", ICML 2018 (R1).
    """

    code = "NRM005"
    name = "batchnorm-in-gradient-penalty-critic"
    severity = Severity.WARNING
    summary = "source: BatchNorm in a critic trained with a gradient penalty (per-sample gradients, batch statistics)"
    scope = "source"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        if "grad" not in ctx.text or "create_graph" not in ctx.text:
            return
        script = Script.of(ctx)
        for call in script.calls:
            if torch_name(script, dotted(call.func)) != "torch.autograd.grad" or not _creates_graph(call):
                continue
            critic = _critic_of(script, call)
            if critic is None:
                continue
            module, model_call = critic
            norm = layer_in(module, BATCH_NORM)
            if norm is None or norm == UNKNOWN:
                continue
            name = module.cls[1].name if module.cls is not None else dotted(model_call.func)
            yield self.finding(
                f"`{name}` is trained with a gradient penalty (`torch.autograd.grad` of its output with respect to "
                f"its input, line {call.lineno}) and normalizes with BatchNorm ({_place(ctx, norm)}): the per-sample "
                "gradient the penalty bounds depends on the whole batch; use LayerNorm or no normalization in the critic",
                file=ctx.path, line=_finding_line(ctx, norm, call.lineno),  # type: ignore[arg-type]
            )


def _creates_graph(call: ast.Call) -> bool:
    keyword = next((k for k in call.keywords if k.arg == "create_graph"), None)
    return keyword is not None and literal(keyword.value) is True


def _critic_of(script: Script, grad: ast.Call) -> tuple[Built, ast.Call] | None:
    """The model whose output the gradient is taken of, when the gradient is with respect to that model's own
    input (`outputs=D(x_hat), inputs=x_hat`): a penalty on the critic, not MAML's gradient of a loss."""
    outputs = _argument(grad, "outputs", 0)
    inputs = _argument(grad, "inputs", 1)
    if outputs is None or inputs is None:
        return None
    if isinstance(inputs, (ast.List, ast.Tuple)) and len(inputs.elts) == 1:
        inputs = inputs.elts[0]
    wanted = dotted(inputs)
    model_call = _producing_call(script, outputs, grad)
    if model_call is None or wanted is None or not model_call.args or dotted(model_call.args[0]) != wanted:
        return None
    module = built(script, model_call.func, model_call)
    return (module, model_call) if module is not None else None


def _argument(call: ast.Call, name: str, index: int) -> ast.expr | None:
    keyword = next((k.value for k in call.keywords if k.arg == name), None)
    if keyword is not None:
        return keyword
    return call.args[index] if len(call.args) > index else None


def _producing_call(script: Script, expr: ast.expr, use: ast.AST) -> ast.Call | None:
    """The model call an output comes from: `D(x)`, through a variable, `.sum()`/`.mean()`/`.view(-1)` and a
    one-element list."""
    for _ in range(6):
        if isinstance(expr, (ast.List, ast.Tuple)) and len(expr.elts) == 1:
            expr = expr.elts[0]
        elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in ("sum", "mean", "view", "reshape", "squeeze", "flatten"):
            expr = expr.func.value
        elif isinstance(expr, ast.Call):
            return expr
        elif isinstance(expr, ast.Name):
            value = script.assigned_before(expr.id, use)
            if not isinstance(value, ast.expr):
                return None
            use, expr = value, value
        else:
            return None
    return None


@register
class BatchNormOnBatchOfOne(Rule):
    """
    ## What it does
    Flags training on batches of one sample with a model that normalizes with BatchNorm: a `DataLoader` built
    with `batch_size=1` (or without a batch size, whose default is 1) that a training loop (one that calls
    `backward()`) iterates, calling a model whose class (read in the same file or a local module, or a
    torchvision classification model) builds a BatchNorm layer.

    ## Why is this bad?
    In training mode BatchNorm normalizes each channel with the mean and variance of the current batch. With one
    sample, `BatchNorm1d` has a single value per channel and raises "Expected more than 1 value per channel when
    training"; `BatchNorm2d` normalizes over one image's pixels only, behaving like instance normalization while
    training, and its running statistics (what eval uses) come from single images: train and eval disagree and
    the model degrades at evaluation.

    ## Example
    ```python
    loader = DataLoader(train_set, batch_size=1, shuffle=True)
    for x, y in loader:
        criterion(resnet(x), y).backward()
    ```

    ## Use instead
    ```python
    loader = DataLoader(train_set, batch_size=32, shuffle=True)  # or GroupNorm/LayerNorm for batch-size-1 work
    ```

    ## Fix
    No automatic fix: train with larger batches (gradient accumulation does not help BatchNorm), or replace
    BatchNorm by GroupNorm/LayerNorm, or freeze it (eval mode) when fine-tuning with tiny batches.

    ## References
    Ioffe, Szegedy, "Batch Normalization", ICML 2015.
    Wu, He, "Group Normalization", ECCV 2018 (BatchNorm's error grows as the batch shrinks).
    """

    code = "NRM006"
    name = "batchnorm-batch-of-one"
    severity = Severity.WARNING
    summary = "source: a model with BatchNorm trained on batches of one sample"
    scope = "source"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        if "DataLoader" not in ctx.text or "backward" not in ctx.text or "FrozenBatchNorm" in ctx.text:
            return
        script = Script.of(ctx)
        for loop in (n for n in script.nodes if isinstance(n, (ast.For, ast.AsyncFor))):
            data = _unwrapped(loop.iter)
            loader = built(script, data, loop) if data is not None else None
            if loader is None or loader.last != "DataLoader" or not _trains(loop):
                continue
            if not isinstance(loader.call.node, ast.Call) or not _batch_of_one(loader.call.node):
                continue
            found = _model_with_batch_norm(script, loop)
            if found is None:
                continue
            module, norm = found
            name = module.cls[1].name if module.cls is not None else module.last
            here = loader.call.script.path == ctx.path
            yield self.finding(
                f"the loop on line {loop.lineno} trains `{name}`, which normalizes with BatchNorm ({_place(ctx, norm)}), "
                f"on batches of one sample (the DataLoader on {_place(ctx, loader.call)}): batch statistics of one "
                "sample are meaningless (BatchNorm1d raises); use a larger batch_size or GroupNorm/LayerNorm",
                file=ctx.path, line=loader.call.line if here else loop.lineno,
            )


def _batch_of_one(loader: ast.Call) -> bool:
    """`batch_size=1`, or no batch size (DataLoader's default is 1) and no batch sampler."""
    keywords = {k.arg: k.value for k in loader.keywords}
    if None in keywords or "batch_sampler" in keywords or "sampler" in keywords and "batch_size" not in keywords:
        return False
    if "batch_size" in keywords:
        return literal(keywords["batch_size"]) == 1
    if len(loader.args) > 1:
        return literal(loader.args[1]) == 1
    return bool(loader.args) or "dataset" in keywords


def _unwrapped(expr: ast.expr) -> ast.expr | None:
    """The data a loop iterates, through `enumerate(...)`, `tqdm(...)`, `iter(...)`."""
    while isinstance(expr, ast.Call) and (dotted(expr.func) or "").rpartition(".")[2] in ("enumerate", "tqdm", "iter", "zip") and expr.args:
        expr = expr.args[0]
    return expr if isinstance(expr, (ast.Name, ast.Attribute, ast.Call)) else None


def _trains(loop: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "backward" for n in ast.walk(loop))


def _model_with_batch_norm(script: Script, loop: ast.AST) -> tuple[Built, Located] | None:
    """The first model the loop calls whose code builds a BatchNorm."""
    for node in ast.walk(loop):
        if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
            continue
        module = built(script, node.func, node)
        if module is None or (module.cls is None and not module.name.startswith("torchvision.") and module.last != "Sequential"):
            continue
        norm = layer_in(module, BATCH_NORM)
        if isinstance(norm, Located):
            return module, norm
    return None
