from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._activations import elementwise_function
from auditor_rules._shared import is_live_dropout

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.findings import AppliedFix
    from auditor.fixing import FixContext, PlanContext
    from auditor.graph import Node
    from auditor.sourcefix import EditContext, SourceEdit


# Activations a dropout commutes with: positively homogeneous, f(0) = 0, and drawing no random numbers.
_SAME_EITHER_WAY = frozenset({"relu", "leaky_relu", "prelu"})
# Activations whose value at 0 is not 0: a dropped unit does not stay dropped.
_NONZERO_AT_ZERO = {"sigmoid": "0.5", "hardsigmoid": "0.5", "softplus": "log 2", "logsigmoid": "-log 2"}


@register
class DropoutBeforeActivation(Rule):
    """
    ## What it does
    Flags a dropout whose output feeds an activation (`Dropout -> ReLU`, `F.dropout` then `torch.tanh`, ...),
    looking through reshapes. The message says which case it is: for the ReLU family the order is a matter of
    convention, for other activations it changes the function (same severity: both are worth fixing). A
    dropout with p = 0 is ignored. Hand-written activations count too: an element-wise, non-linear function of
    the dropout's output alone (minGPT's `NewGELU`, `0.5 * x * (1 + torch.tanh(...))`, `x * torch.sigmoid(x)`).

    ## Why is this bad?
    Dropout belongs after the activation. For the ReLU family (ReLU, LeakyReLU, PReLU) both orders compute the
    same function, because these activations are positively homogeneous with f(0) = 0; the finding is then about
    convention and the wasted work of dropping units the activation would zero anyway. For sigmoid, tanh,
    GELU, SiLU, softplus and the like the order changes the function: where f(0) is not 0 a dropped unit
    becomes f(0) (0.5 for sigmoid), not 0; and since none of them is positively homogeneous, the 1/(1-p)
    rescaling of the kept units is distorted by the non-linearity (tanh saturates them, GELU bends them).

    ## Example
    ```python
    self.head = nn.Sequential(nn.Linear(256, 256), nn.Dropout(0.5), nn.Tanh())
    ```

    ## Use instead
    ```python
    self.head = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Dropout(0.5))
    ```

    ## Fix
    `--fix` moves the dropout after the activation. For the ReLU family the outputs are unchanged; for other
    activations the fix changes what the model computes in training (as intended). A hand-written activation
    reads the dropout's output in several ops: move the dropout after it by hand. In your file, `--fix` reorders
    the `nn.Sequential` entries (or `OrderedDict` entries, or the list the Sequential is built from), or moves the
    call in `forward`: `self.act(self.drop(x))` becomes `self.drop(self.act(x))`, two statements swap.

    ## Fix safety
    Safe before ReLU, LeakyReLU and PReLU: relu(drop(x)) equals drop(relu(x)) with the same mask, so `--fix`
    applies it. Unsafe before any other activation (it changes what the model computes in training): applied with
    `--unsafe-fixes`.

    ## References
    Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 2014.
    """

    code = "DRO001"
    name = "dropout-before-activation"
    severity = Severity.WARNING
    summary = "dropout whose output feeds an activation"
    fix_title = "Move the dropout after the activation"
    fix_safety = "sometimes"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        for dropout in ctx.graph.find(ops.DROPOUT):
            if not is_live_dropout(dropout):
                continue
            written = elementwise_function(ctx.graph, dropout)
            if written is not None:
                yield self.finding(
                    f"{dropout.label()} feeds {written.label()} (a hand-written activation); apply dropout after "
                    "the activation (the order changes the function: dropped units go through the non-linearity, "
                    "and the 1/(1-p) scaling of the kept units is distorted)",
                    at=dropout, unsafe_fix=True,
                )
                continue
            for activation in [a for a in ctx.graph.successors(dropout) if ops.is_activation(a.op)]:
                yield self.finding(
                    f"{dropout.label()} feeds {activation.label()}; apply dropout after the activation ({_effect(activation)})",
                    at=dropout, unsafe_fix=activation.op not in _SAME_EITHER_WAY,
                )

    def fix_plan(self, ctx: PlanContext, dropout: Node) -> list[Node]:
        """The activation the dropout feeds, then the BatchNorm and activation that directly follow it: the
        dropout goes after the last of them."""
        written = elementwise_function(ctx.graph, dropout)
        if written is not None:
            ctx.cannot(f"{written.label()} reads the dropout's output in several ops: move the dropout after it by hand")
        activation = next((a for a in ctx.graph.successors(dropout) if ops.is_activation(a.op)), None)
        if activation is None:
            ctx.cannot("no activation follows the dropout")
        path = ctx.settle_path(activation)
        ctx.check_move_after(dropout, path[-1])
        return path

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Move the dropout after the activation (and after a BatchNorm and activation that directly follow)."""
        dropout = ctx.node(finding)
        path = self.fix_plan(ctx, dropout)
        ctx.move_after(dropout, path[-1])
        return ctx.fixed(finding, f"{ctx.chain(dropout, path)} => {ctx.chain(path, dropout)}")

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """Move the dropout after the activation in the source. Safe past the ReLU family alone: relu(drop(x))
        is drop(relu(x)), with the same mask."""
        dropout = ctx.node(finding)
        path = self.fix_plan(ctx, dropout)
        safe = all(node.op in _SAME_EITHER_WAY for node in path)
        return ctx.edited(finding, ctx.move_after(dropout, path[-1]), f"{ctx.chain(dropout, path)} => {ctx.chain(path, dropout)}", safe=safe)


def _effect(activation: Node) -> str:
    """What the order changes, for the activation's family."""
    if activation.op in ops.RELU_FAMILY:
        return "same function either way for the ReLU family; the order is convention and wasted work"
    if activation.op in _NONZERO_AT_ZERO:
        return f"the order changes the function: dropped units become {activation.op}(0) = {_NONZERO_AT_ZERO[activation.op]}, not 0"
    return (
        f"the order changes the function: {activation.op} is not positively homogeneous, so the 1/(1-p) scaling "
        "of the kept units is distorted"
    )
