"""Hand-written activations: an element-wise function of one value, written as arithmetic instead of a torch
activation (minGPT's `NewGELU`, `0.5 * x * (1 + torch.tanh(...))`; BERT's erf GELU; `x * torch.sigmoid(x)`).

The rules treat such a function like the nn.GELU or nn.SiLU it stands for: a dropout before it is a dropout
before an activation, and its inner `x * g(x)` is not a merge of two values (no skip connection, no gate).
No rule lives here (nothing is registered).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from auditor.graph import AuditGraph, Node, ops

# Ops that map each entry on its own, of which hand-written activations are made.
_ELEMENTWISE = ops.ACTIVATIONS | frozenset({
    ops.ADD, ops.SUB, ops.MUL, ops.DIV, ops.IDENTITY, "to", "contiguous", "clone", "type_as",
    "pow", "erf", "exp", "neg", "sqrt", "rsqrt", "abs", "clamp", "clip", "clamp_min", "clamp_max", "log", "log1p",
    "expm1", "reciprocal", "square", "sin", "cos",
})
# Of those, the non-linear ones (besides a product of two values computed from the same input, `x * x`).
_NONLINEAR = ops.ACTIVATIONS | frozenset({
    "pow", "erf", "exp", "sqrt", "rsqrt", "abs", "clamp", "clip", "clamp_min", "clamp_max", "log", "log1p",
    "expm1", "reciprocal", "square", "sin", "cos",
})
# How far the searches look (hand-written activations are a handful of ops).
_LIMIT = 48


@dataclass
class ElementwiseFunction:
    """An element-wise, non-linear function of `source`'s value: its ops in execution order, and the one op
    whose value leaves it (`output`, of `source`'s shape)."""

    graph: AuditGraph
    source: Node
    nodes: list[Node]
    output: Node

    def label(self) -> str:
        """"NewGELU `mlp.act`" when one module of the user's computes it, else the ops that make it."""
        owners = {n.module for n in self.nodes}
        owner = owners.pop() if len(owners) == 1 else None
        if owner and owner != self.source.module and self.graph.model is not None:
            try:
                kind = type(self.graph.model.get_submodule(owner)).__name__
            except Exception:  # noqa: BLE001 - a name the live model does not have (an exported program)
                kind = None
            if kind:
                return f"{kind} `{owner}`"
        inner = next((n for n in self.nodes if n.op in _NONLINEAR), self.output)
        return f"an element-wise function around {inner.label()}"


def is_elementwise(node: Node) -> bool:
    return node.op in _ELEMENTWISE


def elementwise_source(node: Node) -> Node | None:
    """The one value an element-wise op is computed from through element-wise ops alone (looking past
    parameters and constants), or None when it combines several values (a residual add, a gate)."""
    if not is_elementwise(node):
        return None
    roots: list[Node] = []
    queue, seen = deque([node]), {id(node)}
    while queue:
        if len(seen) > _LIMIT:
            return None
        current = queue.popleft()
        for value in _computed_inputs(current):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if is_elementwise(value):
                queue.append(value)
            elif not any(r is value for r in roots):
                roots.append(value)
                if len(roots) > 1:
                    return None
    return roots[0] if roots else None


def elementwise_function(graph: AuditGraph, source: Node) -> ElementwiseFunction | None:
    """The hand-written activation applied to `source`, if its users compute one: element-wise ops of its value
    alone, non-linear, that hand a single value of the same shape on (more than one op: a lone activation op
    is just that op)."""
    candidates: dict[int, Node] = {}
    pending = [u for u in source.users if is_elementwise(u)]
    while pending and len(candidates) < _LIMIT:
        node = pending.pop()
        if id(node) not in candidates and is_elementwise(node):
            candidates[id(node)] = node
            pending.extend(node.users)
    members: dict[int, Node] = {}
    grew = True
    while grew:  # a candidate joins once everything it reads is the source or a member
        grew = False
        for key, node in candidates.items():
            inputs = _computed_inputs(node)
            if key not in members and inputs and all(i is source or id(i) in members for i in inputs):
                members[key] = node
                grew = True
    if len([n for n in members.values() if n.op not in ops.TRANSPARENT]) < 2 or _starts_with_activation(members, source):
        return None  # an activation op (perhaps scaled afterwards) is that op, not a hand-written one
    exits = [n for n in members.values() if not n.users or any(id(u) not in members for u in n.users)]
    if len(exits) != 1 or exits[0].shape != source.shape or not _nonlinear(members, source):
        return None
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    nodes = sorted(members.values(), key=lambda n: order.get(id(n), 0))
    return ElementwiseFunction(graph, source, nodes, exits[0])


def function_ending_at(graph: AuditGraph, node: Node) -> ElementwiseFunction | None:
    """The hand-written activation whose output is `node`, if it is one."""
    source = elementwise_source(node)
    if source is None:
        return None
    function = elementwise_function(graph, source)
    return function if function is not None and function.output is node else None


def _computed_inputs(node: Node) -> list[Node]:
    """The tensors an op reads that are computed from the model's inputs: not parameters, values made from them
    alone (`self.scale.exp()`), nor constants made there (`torch.tensor(0.5)`)."""
    return [i for i in node.tensor_inputs if not i.parametric]


def _starts_with_activation(members: dict[int, Node], source: Node) -> bool:
    """Whether the source's value goes through one activation op first (`torch.relu(x) * scale`): everything
    after it is a function of the activation's output, not of the source's."""
    entries = [n for n in members.values() if any(i is source for i in _computed_inputs(n))]
    if len(entries) != 1:
        return False
    entry = entries[0]
    while entry.op in ops.TRANSPARENT:
        following = [u for u in entry.users if id(u) in members]
        if len(following) != 1 or len(entry.users) != 1:
            return False
        entry = following[0]
    return ops.is_activation(entry.op)


def _nonlinear(members: dict[int, Node], source: Node) -> bool:
    for node in members.values():
        if node.op in _NONLINEAR:
            return True
        if node.op in (ops.MUL, ops.DIV):
            factors = [i for i in _computed_inputs(node) if i is source or id(i) in members]
            if len(factors) >= 2:
                return True
    return False
