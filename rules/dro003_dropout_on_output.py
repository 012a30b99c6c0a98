from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import is_live_dropout

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.findings import AppliedFix
    from auditor.fixing import FixContext, PlanContext
    from auditor.sourcefix import EditContext, SourceEdit


@register
class DropoutOnOutput(Rule):
    """
    ## What it does
    Flags a dropout whose output is the model's output, directly or through reshapes (`flatten`, `view`,
    `squeeze`, indexing), when what it drops are predictions: the output of the last weight layer (a
    Linear/conv readout). A dropout with p = 0 is ignored. A dropout on the features an encoder or backbone
    returns (after a norm, an activation or a residual sum, as in T5's encoder) regularizes the representation
    a downstream model reads, deliberately; it is not flagged.

    ## Why is this bad?
    Dropout regularizes by dropping *hidden* units so that no unit can rely on another. Applied to the
    output it zeroes logits or predictions themselves and rescales the rest by 1/(1-p): the loss sees a
    corrupted prediction in training (a zeroed logit is not "no evidence", it is a specific score), and the
    scale of the outputs differs between training and evaluation. Nothing downstream can learn to compensate.

    ## Example
    ```python
    self.head = nn.Sequential(nn.Linear(512, 10), nn.Dropout(0.2))
    ```

    ## Use instead
    ```python
    self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 10))
    ```

    ## Fix
    `--fix` removes the dropout (its entry of the `nn.Sequential`, or its call in `forward`; a module attribute it
    no longer uses stays). To keep the regularization, put a dropout before the last layer instead.

    ## Fix safety
    Unsafe: the outputs in training change (at evaluation they do not); applied with `--unsafe-fixes`.

    ## References
    Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 2014
    (dropout is applied to hidden and input units, never to the output).
    """

    code = "DRO003"
    name = "dropout-on-output"
    severity = Severity.WARNING
    summary = "dropout applied to the model's output"
    fix_title = "Remove the dropout on the output"
    fix_safety = "unsafe"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        output = ctx.graph.output
        if output is None:
            return
        for node in ctx.graph.predecessors(output):
            if node.op == ops.DROPOUT and is_live_dropout(node) and _drops_predictions(ctx, node):
                yield self.finding(
                    f"{node.label()} is applied to the model's output: it corrupts the "
                    "predictions in training; remove it, or move it before the last layer",
                    at=node,
                )

    def fix_plan(self, ctx: PlanContext, dropout: Node) -> list[Node]:
        """The dropout can be taken out of the dataflow; returns what it reads (for the message)."""
        ctx.check_remove(dropout)
        return ctx.graph.predecessors(dropout)[:1]

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Remove the dropout on the output."""
        dropout = ctx.node(finding)
        before = self.fix_plan(ctx, dropout)
        ctx.remove(dropout)
        return ctx.fixed(finding, f"{ctx.chain(before, dropout)} -> output => {ctx.chain(before) or 'input'} -> output")

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """Remove the dropout from the source; unsafe: the outputs in training change."""
        dropout = ctx.node(finding)
        before = self.fix_plan(ctx, dropout)
        action = f"{ctx.chain(before, dropout)} -> output => {ctx.chain(before) or 'input'} -> output"
        return ctx.edited(finding, ctx.remove(dropout), action, safe=False)


def _drops_predictions(ctx: GraphContext, dropout: Node) -> bool:
    """Whether the dropped value comes straight from a weight layer: the model's readout, not its features."""
    return any(p.op in _READOUTS for p in ctx.graph.predecessors(dropout))


_READOUTS = frozenset({ops.LINEAR, ops.CONV, ops.CONV_TRANSPOSE, ops.BILINEAR})
