from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import block_name, residual_roles, shape_text, source_label

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.findings import AppliedFix
    from auditor.fixing import FixContext, PlanContext
    from auditor.sourcefix import EditContext, SourceEdit


@register
class SkipConcatMismatch(Rule):
    """
    ## What it does
    Flags a concatenation (`torch.cat`) whose operands differ in a dimension other than the one they are
    concatenated along: a skip connection joined to a tensor of another spatial size, as in a U-Net decoder
    fed an input size its encoder does not halve evenly. The forward pass fails there; the capture steps over
    the failure so the rest of the model is still audited, and the finding reports both shapes.

    ## Why is this bad?
    Every max-pool or stride-2 convolution of an encoder floors odd sizes (33 -> 16), and the decoder's
    upsampling doubles them back (16 -> 32): the skip (33x33) and the upsampled tensor (32x32) no longer line
    up, and `torch.cat` raises "Sizes of tensors must match except in dimension 1". The model then works only
    for input sizes divisible by 2 to the power of its depth, which a user finds out on the first odd-sized
    image or crop.

    ## Example
    ```python
    def forward(self, x, skip):                      # skip [B, 64, 33, 33]
        x = self.up(x)                               # [B, 64, 32, 32]
        return self.conv(torch.cat([skip, x], dim=1))
    ```

    ## Use instead
    ```python
    def forward(self, x, skip):
        x = self.up(x)
        dy, dx = skip.size(2) - x.size(2), skip.size(3) - x.size(3)
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])   # as milesial/Pytorch-UNet does
        return self.conv(torch.cat([skip, x], dim=1))
    ```

    ## Fix
    `--fix` zero-pads the smaller operand to the larger one's size before the concatenation, the odd pixel on
    the far side (as above); with `--skip-concat crop` it center-crops the larger operand to the smaller one's
    size instead (the original U-Net's "copy and crop": the output is then smaller than the input). No new
    parameters; the fixed model runs on the size that failed. By hand you may also feed only input sizes the
    encoder divides evenly. In your file the padding goes right before the `torch.cat`, computed from the two
    tensors' sizes, as in the example above (every input size and every instance of the block is aligned).

    ## Fix safety
    Safe: the forward pass raised at this concatenation, so nothing the model computed before changes.

    ## References
    Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015
    (copy and crop); milesial/Pytorch-UNet (`Up.forward` pads to the skip's size).
    """

    code = "RES004"
    name = "skip-concat-mismatch"
    severity = Severity.ERROR
    summary = "a skip connection concatenated (`torch.cat`) with a tensor whose spatial size differs"
    fix_title = "Pad the smaller operand to the skip's size before concatenating (or center-crop the larger)"
    fix_safety = "safe"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        graph = ctx.graph
        for cat in graph.find(ops.CAT):
            operands = cat.tensor_inputs
            if cat.error is None or len(operands) < 2 or any(o.shape is None for o in operands):
                continue
            owner = block_name(graph, cat.module)
            dim = _dim(cat, len(operands[0].shape or ()))
            differ = _differing(operands, dim)
            if len(operands) == 2:
                skip, other = residual_roles(graph, operands[0], operands[1])
                if skip is not None:
                    yield self.finding(
                        f"`{cat.target}` in {owner} concatenates the skip from {source_label(graph, skip)} "
                        f"{shape_text(skip.shape)} with {source_label(graph, other)} {shape_text(other.shape)}: "
                        f"{differ} differ, so it fails; {_advice(skip, other, source_label(graph, other), dim)}",
                        at=cat,
                    )
                    continue
            listed = " and ".join(f"{source_label(graph, o)} {shape_text(o.shape)}" for o in operands)
            yield self.finding(
                f"`{cat.target}` in {owner} concatenates {listed} on dim {dim}: {differ} differ, so it fails; "
                "make them the same size (pad or crop) before concatenating",
                at=cat,
            )


    def fix_plan(self, ctx: PlanContext, cat: Node) -> object:
        """How the operands become the same size outside the concatenated dim (pad or crop)."""
        if cat.error is None:
            ctx.cannot("the concatenation does not fail")
        return ctx.plan_concat(cat)

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Zero-pad the smaller operands to the largest size (or center-crop the larger, `--skip-concat crop`)."""
        cat = ctx.node(finding)
        self.fix_plan(ctx, cat)
        return ctx.fixed(finding, ctx.align_concat(cat))

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """Zero-pad the smaller operand to the other's size in forward, right before the concatenation."""
        cat = ctx.node(finding)
        self.fix_plan(ctx, cat)
        planned = ctx.plan_concat(cat)
        return ctx.edited(finding, ctx.align_concat(cat), planned.describe([o.label() for o in cat.tensor_inputs]), safe=True)


def _dim(cat: Node, rank: int) -> int:
    dim = cat.attrs.get("dim", cat.attrs.get("axis", 0))
    return dim % rank if isinstance(dim, int) and rank else 0


def _differing(operands: list[Node], dim: int) -> str:
    """"their spatial sizes (33x33 and 32x32)" or "dims 0 ([2] and [3])"."""
    shapes = [o.shape or () for o in operands]
    dims = [d for d in range(len(shapes[0])) if d != dim and len({s[d] for s in shapes}) > 1]
    sizes = " and ".join("x".join(str(s[d]) for d in dims) for s in shapes)
    if dims and min(dims) >= 2:
        return f"their spatial sizes ({sizes})"
    return f"dim{'s' if len(dims) > 1 else ''} {', '.join(map(str, dims))} ({sizes})"


def _advice(skip: Node, other: Node, other_label: str, dim: int) -> str:
    skip_shape, other_shape = skip.shape or (), other.shape or ()
    spatial = [d for d in range(2, len(skip_shape)) if d != dim]
    if not spatial or any(skip_shape[d] < other_shape[d] for d in spatial):
        return "make both the same size (pad or crop) before concatenating"
    target = "x".join(str(skip_shape[d]) for d in spatial)
    return (
        f"pad the output of {other_label} to the skip's {target} (F.pad, as U-Net implementations do) or "
        "center-crop the skip, or feed input sizes the encoder divides evenly"
    )
