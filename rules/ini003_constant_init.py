from __future__ import annotations

from typing import Any, Iterator

from auditor.findings import Finding, Severity
from auditor.graph import Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import downstream, ends_branch

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.findings import AppliedFix
    from auditor.fixing import FixContext, PlanContext
    from auditor.sourcefix import EditContext, SourceEdit
    from auditor.graph.inits import Init

# Relative spread below which entries (or units) count as identical: random inits are ~1.0 on this scale.
_TOLERANCE = 1e-3
_CHECKED = frozenset({ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR, ops.BILINEAR, ops.EMBEDDING, ops.RNN, ops.ATTENTION})


@register
class ConstantInit(Rule):
    """
    ## What it does
    Flags a weight tensor of a conv, linear, bilinear, embedding, recurrent or attention layer whose entries
    are all (nearly) the same, zero included, or whose output units all have identical weights. Biases and
    normalization weights are not checked (BatchNorm's gamma = 1 and zero biases are the standard init), nor
    an embedding's padding row.

    Deliberate constant inits stay silent: the last layer of a residual or gated branch (feeding an add or a
    product: zero-init of Goyal et al. and Fixup, ControlNet's zero convolutions), the network's last layer
    (a zero-init classifier or regression head: each output unit gets its own error signal from the loss, so
    its rows part at the first step), layers with a single output unit (nothing to be symmetric with), and
    frozen weights.

    ## Why is this bad?
    Units of a layer that start with identical incoming weights compute the same value and receive gradients
    that differ only through the weights downstream of them. When those are identical too (the usual cause is
    a loop that applies `nn.init.constant_` or `zeros_` to every layer) the units stay identical forever: the
    layer behaves as if it had one unit, whatever its width. Even when something downstream differs, training
    starts from a degenerate, rank-one point. Random init exists to break this symmetry.

    ## Example
    ```python
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.01)
    ```

    ## Use instead
    ```python
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    ```

    ## Fix
    `--fix` re-initializes the weight randomly (seeded): a conv/linear weight with He or Xavier init for the
    activation that follows, other layers with their type's own `reset_parameters()`. This changes the
    model's weights. In your file the call that made the weight constant (`nn.init.constant_`, `fill_`, a
    `copy_`) becomes that init (an embedding's: `nn.init.normal_`).

    ## Fix safety
    Unsafe: the weights change (applied with `--unsafe-fixes`).

    ## References
    Goodfellow, Bengio, Courville, "Deep Learning", MIT Press 2016, section 8.4 (the need to break symmetry);
    Goyal et al., "Accurate, Large Minibatch SGD", 2017 and Zhang, Dauphin, Ma, "Fixup Initialization",
    ICLR 2019 (deliberate zero init of residual branches).
    """

    code = "INI003"
    name = "constant-init"
    severity = Severity.ERROR
    summary = "a weight tensor with (near) identical entries: symmetry is never broken"
    fix_title = "Re-initialize the weight randomly"
    fix_safety = "unsafe"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        seen: set[int] = set()
        for node in ctx.graph.nodes:
            if node.op not in _CHECKED or not node.is_module or id(node.obj) in seen:
                continue
            seen.add(id(node.obj))
            for name, weight in _weights(node):
                init = ctx.init_of(weight)
                problem = _symmetry(node, weight, init) if init is not None else None
                if problem is None or _deliberate(node):
                    continue
                consequence = "every token starts with the same vector" if node.op == ops.EMBEDDING else (
                    "its units start identical and symmetry is not broken"
                )
                yield self.finding(f"{node.label()} {name} {problem}: {consequence}; initialize it randomly", at=node)

    def fix_plan(self, ctx: PlanContext, node: Node) -> bool:
        """Whether the layer is re-initialized for what follows (a dense layer) or by its own reset_parameters()."""
        if not node.is_module:
            ctx.cannot("the layer is a function call: its weight is not a module parameter")
        dense = node.op in (ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR, ops.BILINEAR)
        if not dense and not callable(getattr(node.obj, "reset_parameters", None)):
            ctx.cannot(f"{node.label()} has no reset_parameters() to draw a random init with")
        return dense

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Re-initialize randomly (seeded): conv/linear weights with He or Xavier for the activation that
        follows, other layers with their type's own `reset_parameters()`."""
        node = ctx.node(finding)
        if self.fix_plan(ctx, node):
            activation = min(downstream(node).activations, key=ctx.position, default=None)
            scheme = ctx.reinit(node.module, "weight", activation)
            return ctx.fixed(finding, f"constant weight => {scheme}")
        ctx.reset_parameters(node.module)
        return ctx.fixed(finding, f"constant weights => {node.module_type}'s default random init (reset_parameters)")


    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """The call that drew the constant weight draws He / Xavier for what follows (an embedding: its own
        default, a standard normal)."""
        node = ctx.node(finding)
        if self.fix_plan(ctx, node):
            first = ctx.first_drawn_alike(node, self.code)
            activation = min(downstream(first).activations, key=ctx.position, default=None)
            change, action = ctx.reinit_for(node.module or "", "weight", activation)
        elif node.op == ops.EMBEDDING:
            change, action = ctx.reinit(node.module or "", "weight", "normal_"), "weight => nn.init.normal_(weight)"
        else:
            ctx.cannot(f"{node.label()}'s own random init is not one init call: remove the constant init by hand")
        return ctx.edited(finding, change, f"constant {action}", safe=False)


def _weights(node: Node) -> list[tuple[str, Any]]:
    """The weight matrices of a layer worth checking (not biases), as (name, tensor)."""
    found = []
    for name, param in sorted(node.params.items()):
        if "bias" in name or param.dim() < 2 or param.numel() < 2:
            continue
        if not param.is_floating_point() or not param.requires_grad:
            continue
        found.append((name, param))
    return found


def _symmetry(node: Node, weight: Any, init: Init) -> str | None:
    """How the weight's entries or units are identical, or None when they are not (or it is not known)."""
    padding = node.attrs.get("padding_idx") if node.op == ops.EMBEDDING else None
    skip = padding if isinstance(padding, int) and weight.shape[0] > 1 else None
    value = init.constant(_TOLERANCE, skip_row=skip)
    if value is not None:
        count = weight.numel() - (weight.numel() // weight.shape[0] if skip is not None else 0)
        return f"has all {count} entries equal to {value:.4g}{_source(init)}"
    unit_dim = 1 if node.op == ops.CONV_TRANSPOSE else 0
    units = int(weight.shape[unit_dim])
    if node.op in (ops.EMBEDDING, ops.RNN, ops.ATTENTION) or units < 2:
        return None
    if init.identical_units(_TOLERANCE, unit_dim):
        return f"has {units} output units with identical weights{_source(init)}"
    return None


def _source(init: Init) -> str:
    """Where the values come from when they were not read: the recorded init call (a model built on meta)."""
    return "" if init.how == "values" else f" (from {init.how})"


def _deliberate(node: Node) -> bool:
    """A constant init that is a known technique: a branch's last layer (zero-init residual), the head,
    or a single output unit."""
    if node.op in (ops.RNN, ops.ATTENTION, ops.EMBEDDING):
        return False
    if node.shape is not None and len(node.shape) >= 2:
        width = node.shape[1] if node.op in (ops.CONV, ops.CONV_TRANSPOSE) else node.shape[-1]
        if width == 1:
            return True
    after = downstream(node)
    if after.norms:
        return False  # a norm after identical units keeps them identical (and divides by a zero variance)
    return ends_branch(after) or (after.reaches_output and not after.weights)
