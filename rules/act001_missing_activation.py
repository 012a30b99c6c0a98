"""ACT001: two weight layers with nothing non-linear between them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import Node, ops
from auditor.rule import GraphContext, Rule, register

# What a value may pass between the two layers and stay a linear function of the first one's output (at
# inference: dropout is the identity, BatchNorm an affine map with its running statistics). Max pooling is
# looked through as well: it downsamples, it is not the layer's non-linearity (NeuraLint's view too).
LINEAR_IN_BETWEEN = frozenset({ops.DROPOUT, ops.BATCH_NORM, ops.IDENTITY, "contiguous", "clone", "to", "type_as"})
SPATIAL = frozenset({ops.POOL, ops.PAD, ops.UPSAMPLE})  # after a conv
SHAPE_QUERIES = frozenset({"size", "dim", "numel", "getattr", "shape", "sym_size"})  # read the shape, not the value
QUIET = frozenset({"contiguous", "clone", "to", "type_as"})  # not worth naming in the message
AXIS_MOVES = ("permute", "transpose", "movedim", "swapaxes", ".t", "_t")


@dataclass
class Layer:
    """A Linear or Conv node, as the rule needs it: its feature dim, widths and kernel."""

    node: Node
    inputs: int  # features / channels it reads
    outputs: int  # features / channels it writes
    kernel: tuple[int, ...]  # (1,) for a Linear
    groups: int

    @property
    def is_conv(self) -> bool:
        return self.node.op == ops.CONV


@register
class MissingActivation(Rule):
    """
    ## What it does
    Flags a Linear or convolution whose output reaches the next Linear or convolution with nothing non-linear
    in between: directly, or through dropout, BatchNorm, reshapes, pooling or padding only. Not flagged, because
    they are deliberate factorizations: a bottleneck narrower than both ends (low-rank projections, LoRA,
    ALBERT's embedding projection), a depthwise or grouped convolution paired with a pointwise one (separable
    convolutions), the 1x1 projection that ends an inverted residual block after its depthwise conv, which the
    next block expands (the linear bottlenecks of MobileNetV2/V3, EfficientNet, MnasNet), a k x 1 then 1 x k
    pair; and any layer whose output is also used elsewhere (attention's q/k/v, an embedding returned next to
    the logits, FPN's lateral convolutions).

    ## Why is this bad?
    A composition of linear maps is one linear map. Without an activation between them the two layers have the
    expressive power of a single layer and only add parameters, compute and a worse-conditioned optimization
    (the forgotten `ReLU` of NeuraLint's "missing activation" fault). BatchNorm and dropout do not change that:
    at inference they are affine maps. LayerNorm, GroupNorm and RMSNorm divide by a per-sample statistic and are
    not looked through.

    ## Example
    ```python
    self.classifier = nn.Sequential(
        nn.Linear(512, 256),
        nn.Dropout(0.5),
        nn.Linear(256, 10),
    )
    ```

    ## Use instead
    ```python
    self.classifier = nn.Sequential(
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, 10),
    )
    ```

    ## Fix
    No automatic fix (the activation to add is a modelling choice): insert one after the first layer, or merge
    the two layers into one if a linear map was intended.

    ## References
    Nikanjam, Braiek, Morovati, Khomh, "Automatic Fault Detection for Deep Learning Programs Using Graph
    Transformations" (NeuraLint), ACM TOSEM 2021.
    Goodfellow, Bengio, Courville, "Deep Learning", MIT Press 2016, section 6.1 (why hidden units need a
    non-linearity).
    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018 (the deliberate case).
    """

    code = "ACT001"
    name = "missing-activation"
    severity = Severity.WARNING
    summary = "two linear/conv layers with no activation between them (they compute one linear map)"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        for node in ctx.graph.nodes:
            first = _layer(node)
            if first is None:
                continue
            found = _next_layer(first)
            if found is None:
                continue
            second, between = found
            if _factorized(first, second):
                continue
            through = f" (only {', '.join(n.label() for n in between)})" if between else ""
            yield self.finding(
                f"{node.label()} feeds {second.node.label()} with no activation between them{through}: add a "
                f"non-linearity after {node.label()}, or merge the two into one layer if a linear map was intended",
                at=node,
            )


def _layer(node: Node) -> Layer | None:
    if node.op not in (ops.LINEAR, ops.CONV) or node.shape is None:
        return None
    source = next((i for i in node.tensor_inputs), None)
    if source is None or source.shape is None or not node.shape or not source.shape:
        return None
    conv = node.op == ops.CONV
    dim = 1 if conv else -1
    if conv and (len(node.shape) < 3 or len(source.shape) < 3):
        return None
    weight = node.params.get("weight") if node.is_module else next((i for i in node.inputs if i.kind == "param"), None)
    weight_shape = tuple(getattr(weight, "shape", None) or ())
    kernel = tuple(int(k) for k in weight_shape[2:]) if conv and len(weight_shape) > 2 else (1,)
    groups = node.attrs.get("groups", 1)
    return Layer(node, int(source.shape[dim]), int(node.shape[dim]), kernel or (1,), groups if isinstance(groups, int) else 1)


def _next_layer(first: Layer) -> tuple[Layer, list[Node]] | None:
    """The layer `first`'s value reaches through linear ops only, used by nothing else on the way: a Linear
    after a Linear, a conv after a conv, or a Linear after a conv through a flatten or a global average."""
    between: list[Node] = []
    current = first.node
    flattened = False  # a conv's maps were flattened or averaged into features
    for _ in range(16):
        users = [u for u in current.users if u.op not in SHAPE_QUERIES]
        if len(users) != 1:
            return None
        nxt = users[0]
        following = _layer(nxt)
        if following is not None:
            if nxt.tensor_inputs[:1] != [current] or following.is_conv != (first.is_conv and not flattened):
                return None
            shown = [n for n in between if n.op not in ops.TRANSPARENT and n.op not in QUIET]
            return following, shown
        step = _linear_between(first, nxt, flattened)
        if step is None:
            return None
        flattened = step
        between.append(nxt)
        current = nxt
    return None


def _linear_between(first: Layer, node: Node, flattened: bool) -> bool | None:
    """Whether the value stays a linear function of `first`'s output through `node` (None when not), and
    whether a conv's maps are flattened into features by then."""
    if len([i for i in node.tensor_inputs if i.op not in SHAPE_QUERIES]) != 1:
        return None
    if node.op in LINEAR_IN_BETWEEN:
        return flattened
    moved = any(word in node.target.lower() for word in AXIS_MOVES)
    if first.is_conv:
        if node.op in SPATIAL and not flattened:
            return False
        if (node.op in (ops.RESHAPE, ops.MEAN)) and not moved:
            return True
        return None
    if node.op in (ops.RESHAPE, ops.GETITEM):  # a Linear's features must stay the last dim
        keeps = node.shape is not None and first.node.shape is not None and bool(node.shape) and node.shape[-1] == first.node.shape[-1]
        return False if keeps and not moved else None
    return None


def _projects_depthwise(node: Node) -> bool:
    """Whether a conv projects the output of a grouped (depthwise) conv: going back through its input, past
    norms, activations, dropout and squeeze-excitation products, the first weight layer is grouped."""
    stack, seen = list(node.tensor_inputs), set()
    while stack:
        current = stack.pop()
        if id(current) in seen or len(seen) > 64:
            continue
        seen.add(id(current))
        layer = _layer(current)
        if layer is not None:
            if layer.groups > 1:
                return True
            continue
        if current.op in ops.WEIGHT_LAYERS or current.op == ops.OPAQUE:
            continue
        stack.extend(current.tensor_inputs)
    return False


def _factorized(first: Layer, second: Layer) -> bool:
    """A deliberate factorization: a bottleneck narrower than both ends (low rank), a grouped/depthwise conv
    with a pointwise one, or a k x 1 conv with a 1 x k one. A conv flattened into a Linear is a map from the
    whole input to the Linear's features."""
    inputs, middle = first.inputs, first.outputs
    if first.is_conv and not second.is_conv:
        source = first.node.tensor_inputs[0].shape or ()
        inputs, middle = math.prod(source[1:]), second.inputs
    if middle < min(inputs, second.outputs):
        return True
    if first.groups > 1 or second.groups > 1:
        return True
    if first.is_conv and _projects_depthwise(first.node):
        return True  # the linear bottleneck of an inverted residual (MobileNetV2/V3, EfficientNet, MnasNet)
    if first.is_conv and len(first.kernel) == len(second.kernel) and len(first.kernel) > 1:
        spread_first = {i for i, k in enumerate(first.kernel) if k > 1}
        spread_second = {i for i, k in enumerate(second.kernel) if k > 1}
        if spread_first and spread_second and not spread_first & spread_second:
            return True
    return False
