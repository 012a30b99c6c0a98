"""How the forward applies each weight, read from the graph rather than from module classes: which op consumes a
parameter and in which layout, hence its fan-in and fan-out, and the constant factors the forward multiplies the
layer by. The init rules judge every weight this way: a Linear's or a Conv's, GPT-2's `Conv1D` (`x @ w`, the
weight stored as (in, out)), a fused mixture-of-experts tensor (`F.linear(x, w[e])`, `grouped_mm(x, w.mT)`), a
raw `nn.Parameter` used in `torch.mm(x, w)`, `F.linear` or `F.conv2d`; the gradient probe measures the modules
holding such weights as layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from auditor.graph import ops
from auditor.graph.model import MODULE, PARAM, AuditGraph, Node

# Layouts: how the op reads its weight (fans follow), and whether fan-out is a documented init mode for it
# (`kaiming_normal_(mode="fan_out")`, torchvision's convnets).
LINEAR = "linear"  # (out, in)
MATMUL = "matmul"  # x @ w: (..., in, out); w @ x: (..., out, in)
CONV = "conv"  # (out, in / groups, *kernel)
CONV_TRANSPOSE = "conv_transpose"  # (in, out / groups, *kernel)
FAN_OUT_MODE = frozenset({CONV, CONV_TRANSPOSE})

# Ops a weight passes through unchanged on its way to the op that applies it: views, an expert's slice of a
# fused tensor, a dtype cast (fx records `w.T` as a `getattr`).
_WEIGHT_VIEWS = ops.TRANSPARENT | frozenset({"select", "slice", "index", "index_select", "narrow", "chunk", "split", "unbind", "getattr"})
# Ops that apply a weight operand to a value.
_APPLYING = frozenset({ops.LINEAR, ops.CONV, ops.CONV_TRANSPOSE, ops.MATMUL})
# Ops whose constant factor scales the signal linearly (`x * 0.125`, `x / math.sqrt(d)`).
_SCALING = frozenset({ops.MUL, ops.DIV})


@dataclass
class WeightUse:
    """One weight as one op applies it."""

    node: Node  # the op: a module call, or F.linear / torch.mm / `x @ w` / F.conv2d ...
    weight: Any  # the whole parameter (a fused expert tensor whole, though the op reads one expert's slice)
    name: str  # "gc1.weight", "model.layers.0.mlp.experts.gate_up_proj"
    layout: str
    fan_in: int
    fan_out: int
    scale: float = 1.0  # constants the forward multiplies the layer's input and output by (T5's d_model ** -0.5)

    @property
    def fan_out_mode(self) -> bool:
        """Whether initializing by fan-out is a documented mode for this layer (convolutions)."""
        return self.layout in FAN_OUT_MODE


@dataclass
class Unjudged:
    """A weight matrix the forward uses in a way its fans cannot be read from."""

    name: str
    weight: Any
    node: Node
    why: str


def weight_uses(graph: AuditGraph) -> tuple[list[WeightUse], list[Unjudged]]:
    """Every dense weight the forward applies, in execution order (a weight applied twice: each time), and the
    weight matrices it applies in ways whose fan-in cannot be derived (a weight computed from others, einsum)."""
    uses: list[WeightUse] = []
    unjudged: list[Unjudged] = []
    for node in graph.nodes:
        if node.kind == MODULE:
            use = _module_use(node)
        elif node.op in _APPLYING:
            use, problem = _call_use(node)
            if problem is not None:
                unjudged.append(problem)
        else:
            use = None
        if use is not None:
            use.scale = _input_scale(node) * _output_scale(node)
            uses.append(use)
    return uses, unjudged


def applies_weight(node: Node) -> bool:
    """Whether a call applies a trainable weight to a value (`x @ self.w`, `F.linear(x, w[e])`,
    `grouped_mm(x, w.mT)`): a weight layer, as a Linear module is (a fixed buffer, such as a graph's adjacency
    matrix, is not)."""
    if node.kind == MODULE or node.op not in _APPLYING:
        return False
    values = [i for i in node.tensor_inputs if not i.parametric]
    return bool(values) and any(i.parametric and _parameters_behind(i) for i in node.inputs)


def _module_use(node: Node) -> WeightUse | None:
    if node.op not in (ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR):
        return None
    weight = node.params.get("weight")
    if not _is_matrix(weight):
        return None
    shape = tuple(int(d) for d in weight.shape)
    layout = {ops.CONV: CONV, ops.CONV_TRANSPOSE: CONV_TRANSPOSE, ops.LINEAR: LINEAR}[node.op]
    fan_in, fan_out = _fans(layout, shape, right=True)
    return WeightUse(node, weight, f"{node.module}.weight" if node.module else "weight", layout, fan_in, fan_out)


def _call_use(node: Node) -> tuple[WeightUse | None, Unjudged | None]:
    """The weight a call applies, read from its operands' shapes; or why a weight it reads cannot be judged."""
    operands = [(i, parameter_of(i)) for i in node.inputs]
    weights = [(i, p) for i, p in operands if p is not None and _is_matrix(p.obj) and i.shape and len(i.shape) >= 2]
    values = [i for i, p in operands if p is None and not i.parametric]
    computed = [p for i in node.inputs if i.parametric and parameter_of(i) is None for p in _parameters_behind(i)]
    if not weights:
        if computed and values:
            return None, Unjudged(computed[0].target, computed[0].obj, node, f"{node.label()} applies a weight computed from it")
        return None, None
    operand, parameter = weights[-1]
    if _is_einsum(node) or not values:
        why = f"it is used through {node.label()}" if _is_einsum(node) else f"{node.label()} reads no input value"
        return None, Unjudged(parameter.target, parameter.obj, node, why)
    layout = _call_layout(node)
    shape = tuple(int(d) for d in operand.shape or ())
    right = True
    if layout == MATMUL:
        right = _is_right_operand(node, operand, values[0])
        if right is None:
            return None, Unjudged(parameter.target, parameter.obj, node, f"which side of {node.label()} it is on is ambiguous")
    fan_in, fan_out = _fans(layout, shape, right)
    return WeightUse(node, parameter.obj, parameter.target, layout, fan_in, fan_out), None


def parameter_of(node: Node) -> Node | None:
    """The PARAM node a weight operand is read from through views and slices only (`w`, `w.t()`, `w[e]`)."""
    for _ in range(32):
        if node.kind == PARAM:
            return node
        if node.op not in _WEIGHT_VIEWS or not node.inputs:
            return None
        node = node.inputs[0]
    return None


def _parameters_behind(node: Node) -> list[Node]:
    """The trainable matrices a parametric value is computed from (weight normalization, a masked weight)."""
    found: list[Node] = []
    stack, seen = [node], set()
    while stack and len(seen) < 64:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.kind == PARAM:
            if _is_matrix(current.obj):
                found.append(current)
        else:
            stack.extend(current.inputs)
    return found


def _is_matrix(weight: Any) -> bool:
    """A trainable floating-point tensor of two dims or more (biases, scales and frozen tensors are not judged)."""
    return (
        weight is not None and getattr(weight, "requires_grad", False) and weight.is_floating_point()
        and weight.dim() >= 2 and weight.numel() >= 2
    )


def _is_einsum(node: Node) -> bool:
    return "einsum" in node.target


def _call_layout(node: Node) -> str:
    if node.op == ops.LINEAR:
        return MATMUL if "addmm" in node.target else LINEAR  # addmm(b, x, w) is x @ w (GPT-2's Conv1D)
    return {ops.CONV: CONV, ops.CONV_TRANSPOSE: CONV_TRANSPOSE}.get(node.op, MATMUL)


def _is_right_operand(node: Node, weight: Node, value: Node) -> bool | None:
    """Whether the weight is the right operand of a matrix product (`x @ w`, w: (..., in, out)) or the left one
    (`w @ x`): by the operands' order, checked against their shapes; None when the shapes do not say."""
    w, x = weight.shape or (), value.shape or ()
    if len(x) == 1:
        x = (1, x[0])  # a vector times a matrix
    if len(w) < 2 or len(x) < 2:
        return None
    fits = {True: x[-1] == w[-2], False: w[-1] == x[-2]}
    if weight in node.inputs and value in node.inputs:
        right = node.inputs.index(weight) > node.inputs.index(value)
        return right if fits[right] else None
    if fits[True] and fits[False] and w[-1] != w[-2]:
        return None
    return True if fits[True] else False if fits[False] else None


def _fans(layout: str, shape: tuple[int, ...], right: bool) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of `shape` as `layout` reads it."""
    if layout in (CONV, CONV_TRANSPOSE):
        receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
        # torch's convention for both (nn.init's fan-in of a transposed conv is its dim 1, its output channels)
        return int(shape[1]) * receptive, int(shape[0]) * receptive
    if layout == LINEAR:
        return int(shape[-1]), int(shape[-2])
    return (int(shape[-2]), int(shape[-1])) if right else (int(shape[-1]), int(shape[-2]))


def _input_scale(node: Node) -> float:
    """The constant factor applied to the layer's input since the last op that was not a view, a dropout or a
    constant scaling (`self.lm_head(h * d_model ** -0.5)`)."""
    values = [i for i in node.tensor_inputs if not i.parametric]
    scale = 1.0
    current = values[0] if len(values) == 1 else None
    for _ in range(32):
        if current is None:
            break
        factor = constant_factor(current)
        if factor is None and current.op not in ops.TRANSPARENT | {ops.DROPOUT}:
            break
        scale *= factor if factor is not None else 1.0
        inputs = [i for i in current.tensor_inputs if not i.parametric]
        current = inputs[0] if len(inputs) == 1 else None
    return scale


def _output_scale(node: Node) -> float:
    """The constant factor applied to the layer's output before anything else reads it."""
    scale = 1.0
    current = node
    for _ in range(32):
        if len(current.users) != 1:
            break
        following = current.users[0]
        factor = constant_factor(following)
        if factor is None and following.op not in ops.TRANSPARENT | {ops.DROPOUT}:
            break
        scale *= factor if factor is not None else 1.0
        current = following
    return scale


def constant_factor(node: Node) -> float | None:
    """The constant a multiplication or division by a number scales its one value by, else None."""
    if node.op not in _SCALING:
        return None
    if len([i for i in node.inputs if not i.parametric]) != 1 or any(i.parametric for i in node.inputs):
        return None
    numbers = [v for k, v in node.attrs.items() if k in ("input", "other") and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != 1:
        return None
    value = float(numbers[0])
    if node.op == ops.MUL:
        return value
    reflected = "rtruediv" in node.target or "rdiv" in node.target or "input" in node.attrs
    if reflected or value == 0:
        return None  # c / x is not a scaling of x
    return 1.0 / value
