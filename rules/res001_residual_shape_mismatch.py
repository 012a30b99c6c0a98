from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import AuditGraph, Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import block_name, is_width_dim, residual_roles, shape_text, singleton_origin, source_label

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.findings import AppliedFix
    from auditor.fixing import FixContext, PlanContext
    from auditor.sourcefix import EditContext, SourceEdit


@register
class ResidualShapeMismatch(Rule):
    """
    ## What it does
    Flags an addition of a block's output and its input (a residual connection) whose operands have
    different shapes: the forward pass fails there, or would need a shortcut projection. An in-place
    `out += x` whose `out` is narrower than the broadcast sum fails too, and is reported with the layer whose
    width made it narrow.

    ## Why is this bad?
    A residual block computes F(x) + x. When F changes the number of channels or the spatial size (a stride),
    x no longer has F(x)'s shape and the add raises. The identity branch must be adapted: option B of He et
    al. projects it with a 1x1 convolution (with the block's stride) plus BatchNorm; option A, parameter-free,
    subsamples it with the stride and zero-pads the extra channels (only when channels grow).

    ## Example
    ```python
    def forward(self, x):            # conv1: 64 -> 128 channels, stride 2
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x
    ```

    ## Use instead
    ```python
    self.shortcut = nn.Sequential(nn.Conv2d(64, 128, 1, stride=2, bias=False), nn.BatchNorm2d(128))
    ...
    return out + self.shortcut(x)
    ```

    ## Fix
    `--fix` inserts a shortcut on the identity branch: a 1x1 convolution with the block's stride plus
    BatchNorm (default), or with `--shortcut pad` the parameter-free zero-pad shortcut when only channels grow
    (with spatial subsampling). For Linear features, a Linear projection. The fixed model runs where the
    original failed; it has new parameters, so this changes the model. In your file the block's class gets the
    projection in `__init__` and applies it to the identity in `forward` (`out + x` -> `out + self.shortcut(x)`),
    built from the constructor's own arguments (`nn.Conv2d(inp, out, kernel_size=1, stride=stride, bias=False)`)
    and, when only some instances of the class mismatch, under a test on them (`if stride != 1 or inp != out:`);
    a block whose identity already goes through an empty `self.shortcut` gets the projection there. A block too
    irregular for that (values no constructor name holds) is left to `--fix --out DIR`.

    ## Fix safety
    Safe: the forward pass raised at this add, so nothing the model computed before changes; the fix makes it run.

    ## References
    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (shortcut options A and B).
    """

    code = "RES001"
    name = "residual-shape-mismatch"
    severity = Severity.ERROR
    summary = "an add of a block output and its input whose shapes differ"
    fix_title = "Insert a projection shortcut (1x1 conv + BN, or zero-padding) on the identity branch"
    fix_safety = "safe"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        for node in ctx.graph.nodes:
            if node.error is None or node.op not in (ops.ADD, ops.SUB, ops.MUL, ops.DIV):
                continue
            owner = block_name(ctx.graph, node.module)
            operands = node.tensor_inputs
            if len(operands) != 2:
                yield self.finding(f"`{node.target}` in {owner} fails: {node.error}", at=node)
                continue
            if _broadcastable(operands[0].shape, operands[1].shape):
                yield self.finding(_in_place_message(ctx.graph, node, owner), at=node)
                continue
            if node.op not in (ops.ADD, ops.SUB):
                # Not a residual, but the forward pass fails here and no other rule says so.
                first, second = operands
                yield self.finding(
                    f"`{node.target}` in {owner} fails: {first.label()} {shape_text(first.shape)} and "
                    f"{second.label()} {shape_text(second.shape)} cannot be combined; "
                    "make both operands the same shape",
                    at=node,
                )
                continue
            identity, branch = residual_roles(ctx.graph, operands[0], operands[1])
            if identity is None:
                first, second = operands
                yield self.finding(
                    f"add in {owner}: {first.label()} {shape_text(first.shape)} and {second.label()} "
                    f"{shape_text(second.shape)} cannot be added; make both operands the same shape",
                    at=node,
                )
                continue
            yield self.finding(
                f"residual add in {owner}: the branch from {source_label(ctx.graph, branch)} "
                f"{shape_text(branch.shape)} and the identity from {source_label(ctx.graph, identity)} {shape_text(identity.shape)} differ; "
                f"{shortcut_advice(branch.shape, identity.shape)}",
                at=node,
            )



    def fix_plan(self, ctx: PlanContext, merge: Node) -> tuple[Node, Node]:
        """(identity, branch) of the residual add, when a shortcut can make the identity the branch's shape."""
        if merge.op not in (ops.ADD, ops.SUB) or len(merge.tensor_inputs) != 2:
            ctx.cannot("only a residual add (or subtraction) of two values can get a shortcut")
        if _broadcastable(merge.tensor_inputs[0].shape, merge.tensor_inputs[1].shape):
            ctx.cannot("the operand written in place is the narrower one: give it the other's shape (a shortcut would not)")
        identity, branch = residual_roles(ctx.graph, *merge.tensor_inputs)
        if identity is None:
            ctx.cannot("neither operand is computed from the other, so there is no identity branch to adapt")
        ctx.plan_shortcut(merge, identity, branch)
        return identity, branch

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Insert a shortcut on the identity operand: 1x1 conv + BN (default), zero-pad (`--shortcut pad`),
        or a Linear projection for features."""
        merge = ctx.node(finding)
        identity, branch = self.fix_plan(ctx, merge)
        return ctx.fixed(finding, ctx.insert_shortcut(merge, identity, branch))


    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """A projection shortcut in the block's class, for the instances whose add mismatches."""
        merge = ctx.node(finding)
        identity, branch = self.fix_plan(ctx, merge)
        change, action = ctx.add_shortcut(merge, identity, branch)
        return ctx.edited(finding, change, action, safe=True)


def _broadcastable(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool:
    """Operands an out-of-place op would accept: such an op fails only in place (`out += x`, `out` narrower)."""
    return a is not None and b is not None and all(x == y or 1 in (x, y) for x, y in zip(reversed(a), reversed(b)))


def _in_place_message(graph: AuditGraph, node: Node, owner: str) -> str:
    """`out += x` that fails because `out` is narrower than the sum: which operand, and the layer whose width
    made it so when one did (a conv with one output channel)."""
    written, other = node.tensor_inputs
    cause = ""
    for dim in range(-1, -len(written.shape or ()) - 1, -1):
        if written.shape[dim] == 1 and node.shape is not None and node.shape[dim] > 1:
            origin = singleton_origin(written, dim)
            if is_width_dim(origin, dim):
                cause = f": {origin.label()} produces 1 where {node.shape[dim]} are needed"
                break
    return (
        f"in-place `{node.target}` in {owner} fails: {source_label(graph, written)} {shape_text(written.shape)} "
        f"cannot hold its sum with {source_label(graph, other)} {shape_text(other.shape)}, broadcast to "
        f"{shape_text(node.shape)}{cause}; give both operands the same shape"
    )


def shortcut_advice(branch: tuple[int, ...] | None, identity: tuple[int, ...] | None) -> str:
    """What the identity branch needs to match the block's output."""
    if branch is None or identity is None or len(branch) != len(identity):
        return "make both operands the same shape"
    if len(branch) == 2 or (len(branch) == 3 and branch[:-1] == identity[:-1]):
        return f"project the identity with a Linear({identity[-1]}, {branch[-1]})"
    channels_in, channels_out = identity[1], branch[1]
    strides = [i // b if b and i % b == 0 else None for i, b in zip(identity[2:], branch[2:])]
    stride = strides[0] if strides and all(s == strides[0] for s in strides) and strides[0] else None
    if stride is None:
        return "the spatial sizes do not divide; make both operands the same shape"
    stride_text = f", stride {stride}" if stride != 1 else ""
    advice = f"add a shortcut: 1x1 conv {channels_in}->{channels_out}{stride_text} + BatchNorm"
    if channels_out > channels_in:
        advice += f", or zero-pad {channels_out - channels_in} channels" + (f" after subsampling by {stride}" if stride != 1 else "")
    return advice
