from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from auditor.findings import Finding, Severity
from auditor.graph import ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._activations import function_ending_at

if TYPE_CHECKING:
    from auditor.findings import AppliedFix
    from auditor.fixing import FixContext, PlanContext
    from auditor.graph import AuditGraph, Node
    from auditor.sourcefix import EditContext, SourceEdit


# Layers whose outputs a BatchNorm should normalize before the activation.
_WEIGHTED = frozenset({ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR})


@register
class BatchNormAfterActivation(Rule):
    """
    ## What it does
    Flags conv/linear -> activation -> BatchNorm: a BatchNorm that normalizes the output of an activation
    which itself follows a weight layer (looking through reshapes, dropout and pooling in between). A
    hand-written activation (an element-wise, non-linear function such as `x * torch.sigmoid(x)`) counts too.

    A reshape that regroups the layer's outputs into other channels (a Linear's 8192 features viewed as a
    [512, 4, 4] map and normalized per channel, as DCGAN-style generators project their noise) is not flagged:
    that norm does not normalize the layer's features, and moving it before the activation is not the same
    design. A reshape that keeps the features as channels (a flatten, an `unsqueeze`) is looked through.

    ## Why is this bad?
    Batch normalization was designed to normalize the pre-activations of a layer (Ioffe & Szegedy): conv ->
    BN -> activation keeps the activation's input zero-mean and unit-variance, which is what makes the
    non-linearity well-behaved and training stable. Normalizing after a ReLU normalizes a half-rectified,
    skewed distribution instead, and leaves the activation fed by unnormalized values.

    ## Example
    ```python
    nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(128))
    ```

    ## Use instead
    ```python
    nn.Sequential(nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
    ```

    ## Fix
    `--fix` moves the BatchNorm between the weight layer and the activation (its `num_features` stays valid,
    since the activation does not change the shape). This changes what the model computes. In your file the
    norm's entry moves before the activation's (also from `layers.append(norm)` into the list the activation is
    in), or its call in `forward` moves: `self.bn(F.relu(x))` becomes `F.relu(self.bn(x))`.

    ## Fix safety
    Unsafe: the model computes another function (applied with `--unsafe-fixes`).

    ## References
    Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
    Shift", ICML 2015.
    """

    code = "NRM001"
    name = "batchnorm-after-activation"
    severity = Severity.WARNING
    summary = "conv/linear -> activation -> BatchNorm"
    fix_title = "Put the BatchNorm between the conv/linear and the activation"
    fix_safety = "unsafe"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        for norm in ctx.graph.find(ops.BATCH_NORM):
            for activation in ctx.graph.predecessors(norm, through=ops.TRANSPARENT | {ops.DROPOUT, ops.POOL}):
                if ops.is_activation(activation.op):
                    named, layers = activation.label(), _weight_layers(ctx.graph, activation)
                else:
                    written = function_ending_at(ctx.graph, activation)
                    if written is None:
                        continue
                    named, layers = f"{written.label()} (a hand-written activation)", _weight_layers(ctx.graph, written.source, itself=True)
                for layer in layers:
                    if not _normalizes_features_of(norm, layer):
                        continue
                    yield self.finding(
                        f"{norm.label()} normalizes the output of {named} after {layer.label()}; "
                        "use conv/linear -> BatchNorm -> activation",
                        at=norm,
                    )

    def fix_plan(self, ctx: PlanContext, norm: Node) -> tuple[Node, Node]:
        """(the activation the norm must move before, the conv/linear that feeds it)."""
        for activation in ctx.graph.predecessors(norm, through=ops.TRANSPARENT | {ops.DROPOUT, ops.POOL}):
            if not ops.is_activation(activation.op):
                written = function_ending_at(ctx.graph, activation)
                if written is not None:
                    ctx.cannot(f"{written.label()} is a hand-written activation of several ops: move the BatchNorm before it by hand")
                continue
            layers = [p for p in _weight_layers(ctx.graph, activation) if _normalizes_features_of(norm, p)]
            if not layers:
                continue
            features = norm.attrs.get("num_features")
            feeding = activation.tensor_inputs[0].shape if activation.tensor_inputs else None
            if feeding is None or len(feeding) < 2 or (isinstance(features, int) and feeding[1] != features):
                ctx.cannot(f"{norm.label()} normalizes {features} features, but {activation.label()} receives {feeding}")
            ctx.check_move_before(norm, activation)
            return activation, layers[0]
        ctx.cannot("no conv/linear -> activation comes before the BatchNorm")

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Move the BatchNorm to right after the conv/linear, before the activation."""
        norm = ctx.node(finding)
        activation, layer = self.fix_plan(ctx, norm)
        ctx.move_before(norm, activation)
        return ctx.fixed(finding, f"{ctx.chain(layer, activation, norm)} => {ctx.chain(layer, norm, activation)}")

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """Move the BatchNorm before the activation in the source; unsafe: the model computes another function."""
        norm = ctx.node(finding)
        activation, layer = self.fix_plan(ctx, norm)
        action = f"{ctx.chain(layer, activation, norm)} => {ctx.chain(layer, norm, activation)}"
        return ctx.edited(finding, ctx.move_before(norm, activation), action, safe=False)


def _weight_layers(graph: AuditGraph, node: Node, itself: bool = False) -> list[Node]:
    """The conv/linear layers that produce `node`'s input (or `node` itself, with `itself`), looking through
    reshapes."""
    if itself and node.is_(_WEIGHTED):
        return [node]
    return [p for p in graph.predecessors(node) if p.is_(_WEIGHTED)]


def _normalizes_features_of(norm: Node, layer: Node) -> bool:
    """Whether the norm's channels are the layer's output features. A reshape on the way can regroup them: a
    Linear's 8192 outputs viewed as a [512, 4, 4] map and normalized per channel (a DCGAN-style projection)
    is a different normalization, chosen on purpose, and BN -> activation there would need another norm."""
    channels = norm.attrs.get("num_features")
    given = norm.tensor_inputs[0].shape if norm.tensor_inputs else None
    if not isinstance(channels, int):
        channels = given[1] if given is not None and len(given) > 1 else None
    shape = layer.shape
    if channels is None or not shape or len(shape) < 2:
        return True
    features = shape[-1] if layer.op == ops.LINEAR else shape[1]
    return features == channels
