from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import PARAM, AuditGraph, Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import block_name, is_width_dim, residual_roles, shape_text, singleton_origin, source_label

# What a recurrent layer's final state goes through on its way into a time axis: indexing and reshapes.
_STATE_VIEWS = ops.TRANSPARENT | {"select", "slice"}


@register
class ResidualBroadcast(Rule):
    """
    ## What it does
    Flags a residual add (one operand is computed from the other) that silently broadcasts: the branch
    has a size-1 dim made by a layer's width, such as a convolution with one output channel added to a
    64-channel input ([B, 1, H, W] + [B, 64, H, W]) or a Linear to 1 feature added to [B, D]; or the sum is
    larger than both operands ([B, D] + [B, 1, D] gives [B, B, D]).

    The same for a recurrent layer's final state moved into a time axis of size 1 (`h[-1].unsqueeze(1)`) and
    added to every step of a sequence the layer produced `T` steps of.

    Deliberate broadcasts stay silent: operands that are not a block's input and output (a time or class
    embedding, an attention mask), size-1 dims made on purpose by pooling, a reduction, `unsqueeze`/`None`
    indexing or `view` (global context added to every position), and broadcasting over the batch (positional
    embeddings).

    ## Why is this bad?
    Broadcasting never fails, so a residual block whose branch has the wrong width still runs: every channel
    of the input receives the same single-channel update, and the block can only learn a fraction of what it
    was meant to. With mismatched ranks the sum even grows a dimension, and the error surfaces (if at all)
    far away in the loss. A residual connection needs F(x) and x to have the same shape.

    ## Example
    ```python
    self.branch = nn.Conv2d(64, 1, 3, padding=1)       # meant 64 output channels
    def forward(self, x):
        return x + self.branch(x)                       # [B, 1, H, W] broadcast over 64 channels
    ```

    ## Use instead
    ```python
    self.branch = nn.Conv2d(64, 64, 3, padding=1)
    ```

    ## Fix
    Give the branch the identity's shape (fix the layer's width, or the missing `unsqueeze`). No automatic
    fix: which side is wrong is the author's call.

    ## References
    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (the identity shortcut
    requires F(x) and x of the same dimensions); NumPy/PyTorch broadcasting semantics.
    """

    code = "RES002"
    name = "residual-broadcast"
    severity = Severity.ERROR
    summary = "an add that silently broadcasts one operand to a larger shape"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        graph = ctx.graph
        for add in graph.find(ops.ADD):
            operands = [i for i in add.tensor_inputs if i.kind != PARAM]
            if add.error is not None or len(operands) != 2 or add.shape is None:
                continue
            a, b = operands
            if a.shape is None or b.shape is None or a.shape == b.shape:
                continue
            identity, branch = residual_roles(graph, a, b)
            if identity is None:
                continue  # not a block's input and output: a mask, a conditioning embedding...
            owner = block_name(graph, add.module)
            if add.shape not in (a.shape, b.shape):
                yield self.finding(
                    f"residual add in {owner} broadcasts the branch from {source_label(graph, branch)} "
                    f"{shape_text(branch.shape)} and the identity from {source_label(graph, identity)} "
                    f"{shape_text(identity.shape)} to {shape_text(add.shape)}, larger than both; "
                    "make both operands the same shape",
                    at=add,
                )
                continue
            small = a if a.shape != add.shape else b
            for dim in _broadcast_dims(small.shape, add.shape):
                role = "branch" if small is branch else "identity"
                wide = identity if small is branch else branch
                other = "identity" if small is branch else "branch"
                state = _recurrent_state(graph, small, dim % len(add.shape), add.shape[dim])
                if state is not None:
                    yield self.finding(
                        f"residual add in {owner} broadcasts the {role} {shape_text(small.shape)}, the final state of "
                        f"{state.label()}, over the {add.shape[dim]} time steps of the {other} from "
                        f"{source_label(graph, wide)} {shape_text(wide.shape)}: every step receives the same state; "
                        "add the per-step outputs (`out`, not `h`) or reduce over time on purpose",
                        at=add,
                    )
                    break
                origin = singleton_origin(small, dim)
                if not is_width_dim(origin, dim):
                    continue  # made size 1 on purpose (pooling, a reduction, unsqueeze, view)
                yield self.finding(
                    f"residual add in {owner} broadcasts the {role} from {source_label(graph, small)} "
                    f"{shape_text(small.shape)} over dim {dim % len(add.shape)} of the {other} from "
                    f"{source_label(graph, wide)} {shape_text(wide.shape)}: {origin.label()} "
                    f"produces 1 where {add.shape[dim]} are needed; give both operands the same shape",
                    at=add,
                )
                break


def _recurrent_state(graph: AuditGraph, operand: Node, dim: int, steps: int) -> Node | None:
    """The recurrent layer whose final state `operand` is, moved into a time axis of size 1 (`h[-1].unsqueeze(1)`,
    `h.transpose(0, 1)`): reached through indexing and reshapes alone, from a layer that read a sequence of
    `steps` steps along `dim`."""
    for source in graph.predecessors(operand, through=_STATE_VIEWS) if operand.op in _STATE_VIEWS else []:
        read = source.tensor_inputs[0].shape if source.op == ops.RNN and source.tensor_inputs else None
        if read is None or len(read) != 3:
            continue
        time_dim = 1 if source.attrs.get("batch_first") else 0
        if time_dim == dim and read[dim] == steps:
            return source
    return None


def _broadcast_dims(small: tuple[int, ...], result: tuple[int, ...]) -> list[int]:
    """Dims (negative, right-aligned) where `small` has size 1 and the sum is larger, ignoring the batch dim
    and dims `small` lacks (broadcasting over the batch is how positional embeddings are added)."""
    dims = []
    for offset in range(1, len(small) + 1):
        index = len(result) - offset
        if index == 0:
            break  # the batch dim
        if small[-offset] == 1 and result[-offset] > 1:
            dims.append(-offset)
    return dims
