from __future__ import annotations

import math
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import Node, ops
from auditor.rule import GraphContext, Rule, register

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.findings import AppliedFix
    from auditor.fixing import FixContext, PlanContext
    from auditor.graph.inits import Init
    from auditor.sourcefix import EditContext, SourceEdit

# Gate blocks stacked along dim 0 of weight_hh, in PyTorch's order.
_GATES = {"LSTM": "ifgo", "GRU": "rzn"}


@register
class RecurrentInitNotOrthogonal(Rule):
    """
    ## What it does
    Checks the hidden-to-hidden weights (`weight_hh_l*`) of every RNN, LSTM and GRU (and their cells) one gate
    block at a time (LSTM stacks 4 blocks along dim 0: input, forget, cell, output; GRU 3: reset, update,
    new) and reports the blocks that are not (scaled) orthogonal: all singular values equal. The deviation is
    measured as the relative distance of W^T W from a multiple of the identity (0 for orthogonal, about 1 for
    a random matrix); blocks above the `orthogonal-tolerance` setting (default 0.1) are reported.

    Layers left at PyTorch's default init (uniform in +-1/sqrt(hidden), std 1/sqrt(3 * hidden)) are reported
    like any other non-orthogonal init, and the message says it is the default, so an explicit init worth a
    look reads apart from it. A layer whose gate blocks were each drawn with `nn.init.orthogonal_` is not
    reported; `nn.init.orthogonal_` on the whole stacked `weight_hh` of an LSTM or GRU is (see below).

    ## Why is this bad?
    A recurrent layer applies the same hidden-to-hidden matrix at every time step, so the signal and the
    gradient through time are multiplied by it again and again: singular values above 1 explode over long
    sequences, below 1 vanish. An orthogonal matrix has all singular values 1 and preserves the norm however
    many steps are taken (Saxe et al.). PyTorch's default, uniform in +-1/sqrt(hidden), is not orthogonal.
    Gates are separate matrices stacked in one tensor: orthogonalizing the stacked tensor as a whole does not
    make each gate orthogonal. Informational: gating and gradient clipping often cope, but orthogonal init is
    cheap and helps on long sequences.

    ## Example
    ```python
    self.lstm = nn.LSTM(128, 256, batch_first=True)    # default uniform init
    ```

    ## Use instead
    ```python
    self.lstm = nn.LSTM(128, 256, batch_first=True)
    for name, param in self.lstm.named_parameters():
        if name.startswith("weight_hh"):
            for gate in param.data.chunk(4, dim=0):      # 3 for GRU, 1 for RNN
                nn.init.orthogonal_(gate)
    ```

    ## Fix
    `--fix` re-initializes each gate block of the hidden-to-hidden weights with `nn.init.orthogonal_`. This
    changes the model's weights. In your file the init call that drew them becomes a loop over the gate blocks (a
    plain RNN's one block: `nn.init.orthogonal_(w)`), or, for a layer left at PyTorch's default, its orthogonal
    init follows the line creating it.

    ## Fix safety
    Unsafe: the weights change (applied with `--unsafe-fixes`).

    ## References
    Saxe, McClelland, Ganguli, "Exact solutions to the nonlinear dynamics of learning in deep linear neural
    networks", ICLR 2014; Le, Jaitly, Hinton, "A Simple Way to Initialize Recurrent Networks of Rectified
    Linear Units", 2015.
    """

    code = "INI002"
    name = "recurrent-init-not-orthogonal"
    severity = Severity.INFO
    summary = "RNN/LSTM/GRU hidden-to-hidden weights not orthogonal"
    fix_title = "Re-initialize each gate block orthogonally"
    fix_safety = "unsafe"
    settings = {"orthogonal-tolerance": 0.1}

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        tolerance = float(ctx.setting("orthogonal-tolerance"))
        seen: set[int] = set()
        for node in ctx.graph.find(ops.RNN):
            if not node.is_module or id(node.obj) in seen:
                continue
            seen.add(id(node.obj))
            gates = _gate_names(node.module_type or "", node.attrs.get("mode"))
            hidden = node.attrs.get("hidden_size")
            bad: list[str] = []
            worst = 0.0
            all_default = True
            for name, weight in sorted(node.params.items()):
                if not name.startswith("weight_hh") or not weight.requires_grad:
                    continue
                init = ctx.init_of(weight)
                deviations = init.block_deviations(len(gates)) if init is not None else None
                if init is None or deviations is None:
                    continue
                failing = [g for g, d in zip(gates, deviations) if d is not None and d > tolerance]
                if failing:
                    worst = max(worst, max(d for d in deviations if d is not None))
                    which = f" gates {', '.join(failing)}" if len(gates) > 1 else ""
                    bad.append(f"{name}{which}")
                    all_default = all_default and isinstance(hidden, int) and _at_default(init, hidden, weight.numel())
            if bad:
                why = " (PyTorch's default init, uniform in +-1/sqrt(hidden))" if all_default else ""
                yield self.finding(
                    f"{node.label()} hidden-to-hidden weights are not orthogonal{why}: {'; '.join(bad)} (deviation up "
                    f"to {worst:.2f}, 0 for orthogonal); initialize each gate block with nn.init.orthogonal_",
                    at=node,
                )

    def fix_plan(self, ctx: PlanContext, node: Node) -> list[str]:
        """The trainable hidden-to-hidden weights of the module."""
        names = sorted(n for n, p in node.params.items() if n.startswith("weight_hh") and p.requires_grad)
        if not node.is_module or not names:
            ctx.cannot("no trainable hidden-to-hidden weight of a module to re-initialize")
        return names

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Re-initialize every gate block of the hidden-to-hidden weights orthogonally (seeded)."""
        node = ctx.node(finding)
        names = self.fix_plan(ctx, node)
        gates = _gate_names(node.module_type or "", node.attrs.get("mode"))
        for name in names:
            ctx.orthogonal_gates(node.module, name, len(gates))
        blocks = f"{len(gates)} gate blocks" if len(gates) > 1 else "one block"
        return ctx.fixed(finding, f"{', '.join(names)} not orthogonal => orthogonal per gate ({blocks} each)")

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """Each gate block orthogonal where the hidden-to-hidden weights are drawn (or after the layer's creation)."""
        node = ctx.node(finding)
        names = self.fix_plan(ctx, node)
        gates = len(_gate_names(node.module_type or "", node.attrs.get("mode")))
        change = None
        for name in names:  # the layers of a stacked LSTM share the loop or the call that draws them
            step = ctx.orthogonal_gates(node.module or "", name, gates)
            change = step if change is None else change
            if step.ops != change.ops:
                ctx.cannot(f"`{node.module}`'s hidden-to-hidden weights are drawn by different calls: orthogonalize them by hand")
        blocks = f"per gate ({gates} blocks each)" if gates > 1 else "(one block)"
        return ctx.edited(finding, change, f"{', '.join(names)} => orthogonal {blocks}", safe=False)


def _at_default(init: Init, hidden: int, size: int) -> bool:
    """Whether a recurrent weight has PyTorch's default scale: uniform in +-1/sqrt(hidden), std 1/sqrt(3 hidden)
    (within 5%, plus the sampling spread of a std estimated from `size` entries), centered."""
    moments = init.std_mean()
    if moments is None or hidden <= 0:
        return False
    std, mean = moments
    default = 1 / math.sqrt(3 * hidden)
    return abs(std / default - 1) <= 0.05 + 3 / math.sqrt(2 * max(size, 1)) and abs(mean) <= 0.1 * default


def _gate_names(class_name: str, mode: object) -> str:
    kind = str(mode) if isinstance(mode, str) else class_name
    for key, names in _GATES.items():
        if kind.startswith(key):
            return names
    return "h"
