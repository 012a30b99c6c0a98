"""GRD001-GRD003: conclusions of the gradient and signal probe (`audit --probe`).

The probe (auditor/probes) measures per weight layer, in forward order, the std of the signal each layer reads
and the norm of the gradient flowing back through that point. With a healthy initialization both stay within
an order of magnitude or so across depth (He init keeps the forward std and the backward norm constant for
ReLU stacks; normalization and residual connections do the same for ResNets and transformers). A bad gain
compounds per layer, so a trend of orders of magnitude is the finding; where the trend starts is its location.

A trend is judged without its largest single step. One layer can move the scale a lot on its own and be fine: a
classifier head initialized with std 0.01 (torchvision's MobileNets, VGG), a global pool after BatchNorm that,
on a batch of one in training mode, normalizes every channel to mean zero and so hands the head almost nothing.
Such a jump is one layer's scale (INI001's business), not vanishing or explosion through depth; a real trend
compounds over many layers and still reaches the threshold without any one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

from auditor.findings import Finding, Severity
from auditor.rule import ProbeContext, Rule, register

MIN_STEPS = 2  # a trend spans at least this many steps between measured layers
SOURCE_GAIN = 1.5  # a first layer that reads the data counts as the trend's start when it already scales this much


@dataclass
class Trend:
    start: str  # module where the trend starts
    end: str  # module where it peaks
    factor: float  # >= 1: how much larger (explosion) or smaller (vanishing) the end is than the start
    steps: int  # weight layers between the two points
    start_value: float
    end_value: float

    @property
    def per_layer(self) -> float:
        return self.factor ** (1 / self.steps) if self.steps > 0 else self.factor


def largest_trend(points: list[tuple[str, float]], growing: bool, min_steps: int = MIN_STEPS) -> tuple[int, int, float, float] | None:
    """(i, j, factor, without_largest_step) for the span i + min_steps <= j whose change in the given direction
    (growth, or shrinking) is largest once its largest single step is left out. `factor` is the whole change
    points[j] / points[i] (or its inverse); the span starts where the values start moving."""
    logs = [math.log(value) for _, value in points]
    sign = 1.0 if growing else -1.0
    best: tuple[int, int, float, float] | None = None
    for i in range(len(logs) - min_steps):
        largest_step = 0.0
        for j in range(i + 1, len(logs)):
            largest_step = max(largest_step, sign * (logs[j] - logs[j - 1]))
            if j - i < min_steps:
                continue
            change = sign * (logs[j] - logs[i])
            if best is None or (change - largest_step, i - j) > (best[3], best[0] - best[1]):  # ties: the shorter span
                best = (i, j, change, change - largest_step)
    if best is None:
        return None
    i, j, change, kept = best
    return i, j, math.exp(change), math.exp(kept)


def main_path(graph: Any) -> set[int] | None:
    """ids of the graph nodes every path from the inputs to the output goes through (they dominate the output):
    the residual stream of a ResNet or transformer, every node of a plain stack. Cooper, Harvey and Kennedy's
    iterative dominators, in one pass since the nodes are in execution (topological) order."""
    if graph is None or graph.output is None:
        return None
    source = object()
    position = {id(source): -1}
    idom: dict[int, Any] = {}
    for index, node in enumerate(graph.nodes):
        position[id(node)] = index
        # data edges only: a shape read off the input (`B = x.shape[0]`) and used in every block is not a path
        # (an optional forward argument left at None is no path either)
        if node.kind == "input":
            preds = [source] if _carries_data(node) else []
        else:
            preds = [p for p in node.inputs if id(p) in idom and _carries_data(p)]
        if not preds:
            continue  # not reachable from an input (parameters, constants)
        common = preds[0]
        for other in preds[1:]:
            common = _intersect(common, other, idom, position, source)
        idom[id(node)] = common
    if id(graph.output) not in idom:
        return None
    stream, current = set(), graph.output
    while current is not source:
        stream.add(id(current))
        current = idom[id(current)]
    return stream


def _carries_data(node: Any) -> bool:
    return node.dtype is not None or node.shape is not None


def _intersect(a: Any, b: Any, idom: dict[int, Any], position: dict[int, int], source: Any) -> Any:
    while a is not b:
        while position[id(a)] > position[id(b)]:
            a = idom[id(a)]
        while position[id(b)] > position[id(a)]:
            b = idom[id(b)]
    return a


def on_main_path(ctx: ProbeContext, layers: list[Any]) -> list[Any]:
    """The layers that read the main path (their node, or the node producing their input, dominates the output).
    A branch's inner layers are left out: with layer scale, zero-init of a branch's last BatchNorm or Fixup,
    their gradients are tiny by design while the stream is healthy. Layers without a node of their own (inside
    an opaque nn.TransformerEncoderLayer) are kept; with fewer than two main-path layers, all are kept."""
    stream = main_path(ctx.graph)
    if stream is None:
        return layers
    graph = ctx.graph
    kept = []
    for layer in layers:
        node = next((n for n in graph.nodes if n.kind == "module" and n.module == layer.module), None)
        if node is None or id(node) in stream or any(id(p) in stream for p in [*node.tensor_inputs, *graph.predecessors(node)]):
            kept.append(layer)
    return kept if len(kept) >= 2 else layers


def forward_points(layers: list[Any]) -> list[tuple[str, float]]:
    """The signal each weight layer reads. Not the raw data (its scale is the data's), nor the model's output
    (a last layer's default bias sets its scale whatever came before)."""
    return [(layer.module, layer.in_std) for layer in layers if not layer.raw_input and _usable(layer.in_std)]


def backward_points(layers: list[Any]) -> list[tuple[str, float]]:
    """The gradient norm flowing back through each weight layer's input, from the output side to the input."""
    points = [(layer.module, layer.in_grad_norm) for layer in layers if _usable(layer.in_grad_norm)]
    return list(reversed(points))


def trend(points: list[tuple[str, float]], growing: bool, threshold: float) -> Trend | None:
    """The largest change spanning at least `MIN_STEPS` layers that reaches `threshold` even without its largest
    single step (see the module's docstring)."""
    found = largest_trend(points, growing)
    if found is None or found[3] < threshold:
        return None
    i, j, factor, _ = found
    return Trend(points[i][0], points[j][0], factor, j - i, points[i][1], points[j][1])


def forward_trend(layers: list[Any], growing: bool, threshold: float) -> Trend | None:
    """The forward trend; when it starts at the first measured point and the layer reading the data before it
    already moved the signal the same way, the trend starts at that layer."""
    points = forward_points(layers)
    found = trend(points, growing, threshold)
    if found is None or found.start != points[0][0]:
        return found
    first = next((layer for layer in layers if layer.raw_input), None)
    index = [layer.module for layer in layers].index(points[0][0])
    before = layers[index - 1] if index > 0 else None
    if before is not None and before is first and _usable(before.in_std) and _usable(before.act_std):
        gain = before.act_std / before.in_std
        if (gain > SOURCE_GAIN) if growing else (gain < 1 / SOURCE_GAIN):
            found.start, found.steps = before.module, found.steps + 1
    return found


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _x(value: float) -> str:
    return f"{value:.2g}" if 0.01 <= value < 1000 else f"{value:.1e}"


class _GradientRule(Rule):
    scope = "probe"

    def located(self, ctx: ProbeContext, message: str, module: str) -> Finding:
        return self.finding(message, at=ctx.locate(module), module=module)


@register
class GradientExplosion(_GradientRule):
    """
    ## What it does
    With `--probe`: flags a model whose signal or gradients grow by orders of magnitude across its depth at
    initialization, or whose weight gradients are huge. It names the layer where the growth starts, the total
    factor and the factor per layer.

    ## Why is this bad?
    Each layer multiplies the forward signal and the backward gradient by its gain. A gain above 1 compounds:
    twenty layers at 2x are 10^6x. The first optimizer steps are then enormous for some layers and the loss
    diverges or goes to NaN; float16 overflows even sooner. The usual causes are an init scale too large for the
    activation (std 1.0 instead of He's sqrt(2/fan_in)), depth without normalization or residual connections,
    and recurrences over long sequences.

    The probe runs `probe-passes` float32 forward/backward passes of a surrogate task (cross-entropy against
    random labels for logits, MSE otherwise) in training mode, on a copy of the model. It compares, per weight
    layer in forward order, the std of the signal each layer reads (the raw data excluded) and the norm of the
    gradient flowing back through that point. Only layers on the main path count (the residual stream of a
    ResNet or transformer, not the inside of its branches). A trend must reach the factor even without its
    largest single step: one layer that moves the scale on its own (a classifier head initialized with std
    0.01, a global pool after BatchNorm on a batch of one) is that layer's scale, not growth or vanishing
    through depth. Settings: `explosion-factor` (default 1000: the growth flagged, without its largest step),
    `max-grad-norm` (default 1e6: a weight gradient norm flagged on its own).

    ## Example
    ```python
    layers = []
    for _ in range(12):
        linear = nn.Linear(256, 256)
        nn.init.normal_(linear.weight, std=1.0)  # about 11x per layer with ReLU
        layers += [linear, nn.ReLU()]
    ```

    ## Use instead
    ```python
    nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")  # He: keeps the scale across depth
    ```
    or add normalization (BatchNorm/LayerNorm) and residual connections; clip gradients while training.

    ## Fix
    No automatic fix. Re-initialize the layers from the start of the trend (INI001 can re-init with `--fix`),
    or add normalization.

    ## References
    Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent neural networks", ICML 2013.
    He, Zhang, Ren, Sun, "Delving Deep into Rectifiers", ICCV 2015.
    Glorot, Bengio, "Understanding the difficulty of training deep feedforward neural networks", AISTATS 2010.
    """

    code = "GRD001"
    name = "gradient-explosion"
    severity = Severity.ERROR
    summary = "probe: gradient norms grow by orders of magnitude across depth, or are huge"
    settings = {"explosion-factor": 1000.0, "max-grad-norm": 1e6}

    def check(self, ctx: ProbeContext) -> Iterator[Finding]:
        m = ctx.measurements
        threshold = float(ctx.setting("explosion-factor"))
        layers = on_main_path(ctx, m.layers)
        forward = forward_trend(layers, True, threshold)
        backward = trend(backward_points(layers), True, threshold)
        peak = max(((layer.grad_norm, layer.module) for layer in m.layers if layer.grad_norm is not None and math.isfinite(layer.grad_norm)), default=None)
        huge = peak if peak is not None and peak[0] > float(ctx.setting("max-grad-norm")) else None
        parts = []
        if forward is not None:
            parts.append(
                f"activations grow x{_x(forward.factor)} over {forward.steps} weight layers from `{forward.start}` to "
                f"`{forward.end}` (input std {_x(forward.start_value)} -> {_x(forward.end_value)}), about "
                f"x{_x(forward.per_layer)} per layer"
            )
        if backward is not None:
            parts.append(
                f"gradients grow x{_x(backward.factor)} flowing back from `{backward.start}` to `{backward.end}`"
                + ("" if forward is not None else f", about x{_x(backward.per_layer)} per weight layer")
            )
        if huge is not None:
            owner = f"`{huge[1]}`" if huge[1] else "the model's own weights"
            parts.append(f"the weight gradient of {owner} has norm {_x(huge[0])} (limit {_x(float(ctx.setting('max-grad-norm')))})")
        if not parts:
            return
        start = forward.start if forward is not None else backward.start if backward is not None else huge[1]  # type: ignore[index]
        yield self.located(ctx, "at initialization " + "; ".join(parts), start)


@register
class GradientVanishing(_GradientRule):
    """
    ## What it does
    With `--probe`: flags a model whose signal or gradients shrink by orders of magnitude across its depth at
    initialization, naming the layer where the shrinking starts, the total factor and the factor per layer.

    ## Why is this bad?
    A per-layer gain below 1 compounds just like one above it: the early layers receive almost no gradient and
    barely train, and a vanishing forward signal makes the output ignore the input. Causes: an init scale too
    small (std 0.01 on a deep stack), saturating activations (sigmoid's slope is at most 0.25, so ten sigmoid
    layers divide the gradient by 10^6), PyTorch's default init (about 2.4x below He in std) in deep plain ReLU
    stacks, and long recurrences.

    Measured and judged like GRD001 (see `audit explain GRD001`): the shrink must compound over several layers,
    so a small-std classifier head (torchvision's MobileNets and VGGs use std 0.01 on purpose) is not a finding.
    Setting: `vanishing-factor` (default 1000: the shrink flagged, without its largest single step).

    ## Example
    ```python
    for _ in range(8):
        linear = nn.Linear(64, 64)
        nn.init.normal_(linear.weight, std=0.01)  # gain 0.08 per tanh layer
        layers += [linear, nn.Tanh()]
    ```

    ## Use instead
    ```python
    nn.init.xavier_normal_(linear.weight, gain=nn.init.calculate_gain("tanh"))
    ```
    or ReLU-family activations with He init, normalization, residual connections.

    ## Fix
    No automatic fix. Re-initialize (INI001's `--fix`), replace saturating activations, or add normalization
    and skip connections.

    ## References
    Hochreiter, "Untersuchungen zu dynamischen neuronalen Netzen", 1991; Bengio, Simard, Frasconi, "Learning
    long-term dependencies with gradient descent is difficult", IEEE TNN 1994.
    Glorot, Bengio, "Understanding the difficulty of training deep feedforward neural networks", AISTATS 2010.
    """

    code = "GRD002"
    name = "gradient-vanishing"
    severity = Severity.WARNING
    summary = "probe: gradient norms shrink by orders of magnitude across depth"
    settings = {"vanishing-factor": 1000.0}

    def check(self, ctx: ProbeContext) -> Iterator[Finding]:
        layers = on_main_path(ctx, ctx.measurements.layers)
        threshold = float(ctx.setting("vanishing-factor"))
        forward = forward_trend(layers, False, threshold)
        backward = trend(backward_points(layers), False, threshold)
        parts = []
        if forward is not None:
            parts.append(
                f"activations shrink x{_x(forward.factor)} over {forward.steps} weight layers from `{forward.start}` to "
                f"`{forward.end}` (input std {_x(forward.start_value)} -> {_x(forward.end_value)}), about "
                f"/{_x(forward.per_layer)} per layer"
            )
        if backward is not None:
            parts.append(
                f"gradients shrink x{_x(backward.factor)} flowing back from `{backward.start}` "
                f"(norm {_x(backward.start_value)}) to `{backward.end}` (norm {_x(backward.end_value)})"
                + ("" if forward is not None else f", about /{_x(backward.per_layer)} per weight layer")
            )
        if not parts:
            return
        start = forward.start if forward is not None else backward.start  # type: ignore[union-attr]
        yield self.located(ctx, "at initialization " + "; ".join(parts), start)


@register
class NonFinite(Rule):
    """
    ## What it does
    With `--probe`: flags NaN or Inf in the output, the loss or the gradients of a float32 training-mode pass,
    and names the first op that produced it from finite inputs (its module and forward line), or, when the
    forward pass is finite, the first op whose backward turned finite gradients into non-finite ones.
    Deliberate infinities (`masked_fill(mask, float("-inf"))`) that the model masks away are not findings.

    ## Why is this bad?
    One NaN poisons every parameter it reaches at the next optimizer step, and training never recovers.
    Typical sources: `log`/`sqrt`/division of values that can be zero or negative, `exp` of large values,
    a variance that underflows, `torch.where` hiding a NaN in the branch not taken (its gradient is still NaN),
    NaN already in a weight.

    ## Example
    ```python
    def forward(self, x):
        return self.head(torch.log(self.body(x)))  # log of negative values: NaN
    ```

    ## Use instead
    ```python
    def forward(self, x):
        return self.head(torch.log(F.softplus(self.body(x)) + 1e-6))
    ```

    ## Fix
    No automatic fix: guard the op (clamp, epsilon, a numerically stable formulation such as `logsumexp` or
    `F.log_softmax`).

    ## References
    Goodfellow, Bengio, Courville, "Deep Learning", section 4.1 (overflow and underflow), 2016.
    """

    code = "GRD003"
    name = "non-finite"
    severity = Severity.ERROR
    summary = "probe: NaN/Inf in a forward or backward pass; names the first node"
    scope = "probe"

    def check(self, ctx: ProbeContext) -> Iterator[Finding]:
        m = ctx.measurements
        event = m.non_finite
        if event is None:
            return
        value = "a non-finite value"
        if event.value is not None and math.isnan(event.value):
            value = "NaN"
        elif event.value is not None and math.isinf(event.value):
            value = "Inf"
        where = m.non_finite_where or "values"
        owner = f" in `{event.module}`" if event.module else ""
        if event.detail and where in ("weights", "input"):
            message = f"{event.detail} before training starts" if where == "weights" else event.detail
        elif event.phase == "backward":
            message = f"the backward of {event.op}{owner} first produces {value} from finite gradients (the {where} became non-finite)"
        elif event.detail:
            message = f"{event.detail}"
        else:
            message = f"{event.op}{owner} first produces {value} from finite inputs in the forward pass (the {where} became non-finite)"
        yield self.finding(message, at=ctx.locate(event.module, event.site), module=event.module)
