from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import has_bias

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.findings import AppliedFix
    from auditor.fixing import FixContext, PlanContext
    from auditor.sourcefix import EditContext, SourceEdit

_LAYERS = (ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR)


@register
class BiasBeforeBatchNorm(Rule):
    """
    ## What it does
    Flags a conv/linear layer with a bias whose output goes straight into a BatchNorm (through reshapes
    only, not through an activation), and nowhere else.

    ## Why is this bad?
    BatchNorm subtracts the per-channel mean before scaling, so a constant per-channel bias added just before
    it is cancelled exactly: in training by the batch mean, at evaluation by the running mean that absorbed
    it. The bias parameters are dead weight: memory, optimizer state and weight-decay work for nothing, and
    BatchNorm's own beta already provides the shift. Harmless to accuracy, hence informational.

    ## Example
    ```python
    nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU())
    ```

    ## Use instead
    ```python
    nn.Sequential(nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
    ```

    ## Fix
    `--fix` drops the bias and folds it into the BatchNorm's running mean, so evaluation outputs are
    unchanged (and training outputs too, since the batch mean cancels it anyway). In your file it adds
    `bias=False` to the call that creates the layer, when every layer that line creates feeds a BatchNorm.

    ## Fix safety
    Safe: in training the batch mean cancels the bias, so the model computes the same; a model trained without it
    has the same function. (A freshly built model draws its later layers' random initial values from a shifted
    stream, as after any change to a constructor.)

    ## References
    Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
    Shift", ICML 2015 (section 3.2: the bias "can be ignored" since its effect is cancelled by the mean
    subtraction).
    """

    code = "NRM002"
    name = "bias-before-batchnorm"
    severity = Severity.INFO
    summary = "conv/linear with bias feeding BatchNorm"
    fix_title = "Drop the bias (fold it into the BatchNorm's running mean)"
    fix_safe = True
    fix_safety = "safe"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        seen: set[int] = set()
        for norm in ctx.graph.find(ops.BATCH_NORM):
            for layer in ctx.graph.predecessors(norm):
                if layer.op not in _LAYERS or not has_bias(layer) or id(layer) in seen:
                    continue
                consumers = ctx.graph.successors(layer)
                if any(c.op != ops.BATCH_NORM for c in consumers) or not _same_channels(layer, norm):
                    continue  # the bias matters to another consumer, or is not per normalized channel
                seen.add(id(layer))
                yield self.finding(
                    f"{layer.label()} has a bias and feeds {norm.label()} directly: the norm's mean "
                    "subtraction cancels it; create the layer with bias=False",
                    at=layer,
                )

    def fix_plan(self, ctx: PlanContext, layer: Node) -> Node:
        """The one BatchNorm the layer feeds, into whose running mean the bias folds."""
        norms = [n for n in ctx.graph.successors(layer) if n.op == ops.BATCH_NORM]
        if len(norms) != 1:
            ctx.cannot(f"{layer.label()} feeds {len(norms)} BatchNorms: drop the bias by hand")
        ctx.check_fold_bias(layer, norms[0])
        return norms[0]

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Drop the bias and fold it into the BatchNorm's running mean (outputs unchanged, verified)."""
        layer = ctx.node(finding)
        norm = self.fix_plan(ctx, layer)
        folded = ctx.fold_bias(layer, norm)
        return ctx.fixed(finding, f"{ctx.chain(layer, norm)} with bias => without bias ({folded})", safe=True)

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """`bias=False` where the layer is created. Safe: the BatchNorm cancels the bias in training, and the
        running mean absorbs it once trained. When that line also creates layers this rule does not flag (a block
        helper whose BatchNorm is added under `if bn:`), `bias=not bn`; the re-audit proves which keep theirs."""
        layer = ctx.node(finding)
        norm = self.fix_plan(ctx, layer)
        kept = [other for other in ctx.created_alongside(layer.module or "") if not ctx.has_finding(self.code, other)]
        change = ctx.drop_bias(layer, norm, kept)
        return ctx.edited(finding, change, f"{ctx.chain(layer, norm)}: bias={'False' if not kept else 'only where the norm is created'}", safe=True)


def _same_channels(layer: Node, norm: Node) -> bool:
    """Whether the layer's bias is added along the channels the BatchNorm normalizes (dim 1 of its input)."""
    norm_input = norm.tensor_inputs[0].shape if norm.tensor_inputs else None
    if layer.shape is None or norm_input is None or len(norm_input) < 2 or len(layer.shape) < 2:
        return False
    bias_width = layer.shape[-1] if layer.op == ops.LINEAR else layer.shape[1]
    return bias_width == norm_input[1]
