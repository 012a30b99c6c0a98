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

# What a dropout's noise survives on its way to a BatchNorm: reshapes, pooling, padding, resampling,
# concatenation (DenseNet's dense connections) and the weight layers themselves, which mix it but keep it.
_CARRIERS = ops.TRANSPARENT | ops.ACTIVATIONS | {ops.POOL, ops.PAD, ops.UPSAMPLE, ops.CAT, ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR}


@register
class DropoutBeforeBatchNorm(Rule):
    """
    ## What it does
    Flags a dropout whose output reaches a BatchNorm, directly or through linear/conv layers, activations,
    pooling, reshapes and concatenations, with no other normalization in between (an activation changes the
    noise's distribution, not the fact that the norm's statistics carry it). A dropout with
    p = 0 is ignored. A dropout that reaches several BatchNorms is one finding naming them: the cause is the
    dropout's position.

    ## Why is this bad?
    In training, BatchNorm's running variance is estimated from activations that carry dropout's noise (units
    zeroed, the rest scaled by 1/(1-p)), and the linear layers in between pass that extra variance on. At
    evaluation dropout is the identity, so the variance BatchNorm divides by no longer matches the data it
    normalizes: the "variance shift" of Li et al., which measurably hurts accuracy. Dropout is only safe after
    the last BatchNorm (or with a variance-stable form of dropout).

    ## Example
    ```python
    self.block = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(),
    )
    ```

    ## Use instead
    ```python
    self.block = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.5),
    )
    ```

    ## Fix
    `--fix` moves the dropout after the BatchNorm it reaches, past the conv/linear layers in between, and after
    the activation that directly follows the norm (as Li et al. recommend: dropout after the BatchNorm). This
    changes what the model computes in training. It is left to you when the dropout reaches several BatchNorms,
    when its output is also read elsewhere, or when it is concatenated with other values before the norm
    (moving it would drop those too). In your file the dropout's entry or call moves after the norm's activation,
    past every later BatchNorm it would still feed; it stays where it is when the last is out of the source's reach.

    ## Fix safety
    Unsafe: the model computes another function in training (applied with `--unsafe-fixes`).

    ## References
    Li, Chen, Hu, Yang, "Understanding the Disharmony between Dropout and Batch Normalization by Variance
    Shift", CVPR 2019.
    """

    code = "DRO002"
    name = "dropout-before-batchnorm"
    severity = Severity.WARNING
    summary = "dropout feeding a BatchNorm (variance shift at eval)"
    fix_title = "Move the dropout after the BatchNorm"
    fix_safety = "unsafe"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        for dropout in ctx.graph.find(ops.DROPOUT):
            if not is_live_dropout(dropout):
                continue
            reached = _norms_reached(dropout)
            if not reached:
                continue
            variance, verb = ("their running variances are", "are") if len(reached) > 1 else ("the norm's running variance is", "is")
            yield self.finding(
                f"{dropout.label()} feeds {_reached_text(reached)}: {variance} estimated with dropout noise and "
                f"{verb} wrong at eval (variance shift); apply dropout after the last BatchNorm",
                at=dropout,
            )

    def fix_plan(self, ctx: PlanContext, dropout: Node) -> tuple[list[Node], list[Node]]:
        """(the layers between the dropout and the BatchNorm it reaches, the norm and the activation after it):
        the dropout goes after the last of those."""
        reached = _norms_reached(dropout)
        if not reached:
            ctx.cannot("the dropout does not reach a BatchNorm")
        if len(reached) > 1:
            names = ", ".join(norm.label() for norm, _ in reached)
            ctx.cannot(f"the dropout reaches several BatchNorms ({names}): move it after the last BatchNorm by hand")
        norm, between = reached[0]
        joins = [n for n in between if n.op == ops.CAT]
        if joins:
            ctx.cannot(f"the dropout's output is concatenated with other values ({joins[0].label()}) before "
                       f"{norm.label()}: moving the dropout would drop those too; move it by hand")
        path = ctx.settle_path(norm)
        ctx.check_move_after(dropout, path[-1])
        return between, path

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Move the dropout after the BatchNorm it reaches, past the layers in between (and after the
        activation that follows the norm)."""
        dropout = ctx.node(finding)
        between, path = self.fix_plan(ctx, dropout)
        ctx.move_after(dropout, path[-1])
        return ctx.fixed(finding, f"{ctx.chain(dropout, between, path)} => {ctx.chain(between, path, dropout)}")

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """Move the dropout after the BatchNorm (and its activation) in the source; unsafe: training changes. Where
        the norm's output reaches another BatchNorm, past that one too: a dropout moved only past the first would
        feed the next, and the edited file would keep the warning. When the last is out of the source's reach (an
        entry of a container called whole), nothing is edited."""
        dropout = ctx.node(finding)
        between, path = self.fix_plan(ctx, dropout)
        while reached := _norms_reached(path[-1], _CARRIERS | {ops.DROPOUT}):  # other dropouts move too, or not
            if len(reached) > 1 or any(n.op == ops.CAT for n in reached[0][1]):
                ctx.cannot(f"after {path[0].label()} it would still feed {_reached_text(reached)}: move it by hand")
            norm, more = reached[0]
            between, path = [*between, *path, *more], ctx.settle_path(norm)
        ctx.check_move_after(dropout, path[-1])
        action = f"{ctx.chain(dropout, between, path)} => {ctx.chain(between, path, dropout)}"
        return ctx.edited(finding, ctx.move_after(dropout, path[-1]), action, safe=False)


def _norms_reached(dropout: Node, carriers: frozenset[str] | set[str] = _CARRIERS) -> list[tuple[Node, list[Node]]]:
    """The BatchNorms a dropout's output reaches through `carriers`, each with the nodes in between (first path
    found)."""
    found: list[tuple[Node, list[Node]]] = []
    seen: set[int] = set()
    stack: list[tuple[Node, list[Node]]] = [(u, []) for u in reversed(dropout.users)]
    while stack:
        n, path = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.op == ops.BATCH_NORM:
            found.append((n, path))
        elif n.op in carriers:
            stack.extend((u, path + [n]) for u in reversed(n.users))
    return found


def _reached_text(reached: list[tuple[Node, list[Node]]], shown: int = 4) -> str:
    """"BatchNorm2d `bn` through Conv2d `conv`, ReLU `act`", or "3 BatchNorms: ..." naming them (one finding per
    dropout)."""
    parts = []
    for norm, between in reached[:shown]:
        layers = [n for n in between if n.op in (ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR) or ops.is_activation(n.op)]
        parts.append(norm.label() + (" through " + ", ".join(n.label() for n in layers) if layers else ""))
    if len(reached) == 1:
        return parts[0]
    more = f" and {len(reached) - shown} more" if len(reached) > shown else ""
    return f"{len(reached)} BatchNorms ({'; '.join(parts)}{more})"
