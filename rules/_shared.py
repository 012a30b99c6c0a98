"""Graph questions several rules of the catalog ask: what a weight layer feeds before the next weight layer,
whether a dropout is a no-op, which nodes are attention. No rule lives here (nothing is registered)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auditor.graph import OUTPUT, PARAM, AuditGraph, Node, ops

from auditor_rules._activations import elementwise_source
from auditor.graph.weights import applies_weight

# Layers with a weight matrix the init rules read and the depth rule counts.
DENSE = frozenset({ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR})
# Ops that join two computed tensors: where a skip connection (residual or concatenation) lands.
SKIP_MERGES = frozenset({ops.ADD, ops.SUB, ops.CAT, ops.STACK})
# Ops that combine two computed tensors without being a skip (gating, attention products).
PRODUCTS = frozenset({ops.MUL, ops.DIV, ops.MATMUL})
# Layers whose output width is a constructor argument: a size-1 dim they produce where the other operand of a
# residual add is wider is a wrong width (`out_channels=1`), not a deliberate broadcast.
WIDTH_MAKERS = frozenset({ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR, ops.BILINEAR, ops.RNN, ops.ATTENTION})


def dropout_rate(node: Node) -> float:
    """The drop probability of a dropout node (F.dropout's default 0.5 when the call did not spell it)."""
    p = node.attrs.get("p", 0.5)
    return float(p) if isinstance(p, (int, float)) else 0.5


def is_live_dropout(node: Node) -> bool:
    """A dropout that drops something (p > 0): `Dropout(0.0)` placeholders are not findings."""
    return node.op == ops.DROPOUT and dropout_rate(node) > 0


def merges_two_values(node: Node) -> bool:
    """An op that combines two computed tensors (not a tensor and a parameter, a weight read from one (`w.t()`)
    or a constant, nor two values of one input inside a hand-written activation such as `x * torch.sigmoid(x)`)."""
    return len([i for i in node.tensor_inputs if not i.parametric]) >= 2 and elementwise_source(node) is None


def has_bias(node: Node) -> bool:
    """Whether a conv/linear adds a bias: a module's `bias` parameter, or a tensor passed as a call's bias."""
    if node.is_module:
        return node.params.get("bias") is not None
    return "bias" in (node.meta.get("tensor_args") or ())


def weight_of(node: Node) -> Any:
    """The floating-point weight tensor of a module node (real, or on meta for a model built without weights:
    ask `ctx.init_of` about its values)."""
    if not node.is_module:
        return None
    weight = node.params.get("weight")
    if weight is None or not weight.is_floating_point():
        return None
    return weight


def is_depthwise(node: Node) -> bool:
    groups = node.attrs.get("groups", 1)
    channels = node.attrs.get("in_channels")
    return node.op == ops.CONV and isinstance(groups, int) and groups > 1 and groups == channels


@dataclass
class Downstream:
    """What a node's value meets on its way to the next weight layers."""

    norms: list[Node] = field(default_factory=list)
    activations: list[Node] = field(default_factory=list)
    weights: list[Node] = field(default_factory=list)  # the next weight layers (conv, linear, attention, rnn...)
    merges: list[Node] = field(default_factory=list)  # adds, cats, products with another computed value
    reaches_output: bool = False


def downstream(node: Node) -> Downstream:
    """Follow `node`'s users until each path meets a weight layer, a norm, a merge or the output; activations,
    dropout, pooling, reshapes and other single-input ops are looked through."""
    found = Downstream()
    seen: set[int] = set()
    stack = list(node.users)
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.kind == OUTPUT:
            found.reaches_output = True
        elif n.op in ops.NORMS:
            found.norms.append(n)
        elif n.op in ops.WEIGHT_LAYERS or n.op == ops.OPAQUE or applies_weight(n):
            found.weights.append(n)
        elif (n.op in SKIP_MERGES or n.op in PRODUCTS) and merges_two_values(n):
            found.merges.append(n)
        else:
            if ops.is_activation(n.op):
                found.activations.append(n)
            stack.extend(n.users)
    return found


def ends_branch(after: Downstream) -> bool:
    """Whether a layer is the last of a residual or gated branch: its output is added to (or multiplies)
    another computed value before any other weight layer, as in `x + self.proj(h)` or LayerScale."""
    return any(m.op in (ops.ADD, ops.SUB, ops.MUL) for m in after.merges)


def attention_nodes(graph: AuditGraph) -> list[Node]:
    """Attention wherever it is written: nn.MultiheadAttention, scaled_dot_product_attention, or a softmax
    whose result multiplies values (a hand-written `softmax(q @ k.T) @ v`)."""
    found = graph.find(ops.ATTENTION)
    for softmax in graph.find(ops.SOFTMAX):
        if any(n.op == ops.MATMUL for n in graph.successors(softmax, through=ops.TRANSPARENT | {ops.DROPOUT})):
            found.append(softmax)
    return found


def block_of(node: Node) -> str:
    """The module a node belongs to as a part: a submodule's parent (`layers.0` for `layers.0.norm`), or the
    module whose forward makes a call."""
    name = node.module or ""
    if node.is_module:
        return name.rsplit(".", 1)[0] if "." in name else ""
    return name


def inside(name: str | None, block: str) -> bool:
    name = name or ""
    return block == "" or name == block or name.startswith(block + ".")


def residual_roles(graph: AuditGraph, a: Node, b: Node) -> tuple[Node | None, Node]:
    """(identity, branch) of a residual add: the identity is the operand the other one is computed from."""
    if graph.depends_on(b, a):
        return a, b
    if graph.depends_on(a, b):
        return b, a
    return None, a


def block_name(graph: AuditGraph, module: str | None) -> str:
    """How messages name the module that makes a call: "block `layer2.0` (BasicBlock)", or "the model"."""
    if not module:
        return "the model"
    try:
        kind = type(graph.model.get_submodule(module)).__name__
    except Exception:  # noqa: BLE001 - no live model (a .pt2 program), or a name the model does not have
        return f"block `{module}`"
    return f"block `{module}` ({kind})"


def shape_text(shape: tuple[int, ...] | None) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape is not None else "[?]"


def source_label(graph: AuditGraph, node: Node) -> str:
    """How messages name a value: the layer that made it, looking back through reshapes and indexing."""
    if node.op in ops.TRANSPARENT:
        sources = graph.predecessors(node)
        if len(sources) == 1:
            return sources[0].label()
    return node.label()


def singleton_origin(node: Node, dim: int) -> Node:
    """The node that made dim `dim` size 1, following inputs of the same rank that are already size 1 there."""
    for _ in range(256):
        rank = len(node.shape or ())
        carried = [
            i for i in node.tensor_inputs
            if i.kind != PARAM and i.shape is not None and len(i.shape) == rank and i.shape[dim] == 1
        ]
        if not carried:
            return node
        node = carried[0]
    return node


def is_width_dim(node: Node, dim: int) -> bool:
    """Whether `dim` of the node's output is the width its constructor chose (a conv's channels, a Linear's
    features)."""
    if node.op not in WIDTH_MAKERS or not node.shape:
        return False
    rank = len(node.shape)
    width_dim = 1 if node.op in (ops.CONV, ops.CONV_TRANSPOSE) else rank - 1
    return dim % rank == width_dim
