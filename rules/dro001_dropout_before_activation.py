from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import ops
from auditor.rule import GraphContext, Rule, register


@register
class DropoutBeforeActivation(Rule):
    """
    ## What it does
    Flags a dropout whose output feeds an activation (`Dropout -> ReLU`, `F.dropout` then `torch.tanh`, ...).

    ## Why is this bad?
    Dropout belongs after the activation. For the ReLU family (ReLU, LeakyReLU, PReLU) both orders compute the
    same function, because these activations are positively homogeneous with f(0) = 0; the finding is then about
    convention and the wasted work of dropping units the activation would zero anyway. For sigmoid, tanh,
    GELU, SiLU, softplus and the like the order changes the function: a dropped unit becomes f(0) (0.5 for
    sigmoid), not 0, and the 1/(1-p) rescaling is distorted by the non-linearity.

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
    activations the fix changes what the model computes in training (as intended).

    ## References
    Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 2014.
    """

    code = "DRO001"
    name = "dropout-before-activation"
    severity = Severity.WARNING
    summary = "dropout whose output feeds an activation"
    fix_title = "Move the dropout after the activation"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        for dropout in ctx.graph.find(ops.DROPOUT):
            for activation in ctx.graph.successors(dropout):
                if not ops.is_activation(activation.op):
                    continue
                if activation.op in ops.RELU_FAMILY:
                    effect = "same function either way for the ReLU family; the order is convention and wasted work"
                else:
                    effect = f"the order changes the function: dropped units become {activation.op}(0), not 0"
                yield self.finding(
                    f"{dropout.label()} feeds {activation.label()}; apply dropout after the activation ({effect})",
                    at=dropout,
                )
