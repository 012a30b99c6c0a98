"""The graph every rule reads, whichever capture produced it (fx, export or hooks).

Nodes are values in the model's dataflow: inputs, calls of torch.nn modules (a Conv2d is one node), calls of
functions and tensor methods outside those modules, and the output. Each node carries its canonical op
(`auditor.graph.ops`), the qualified name of its module (or of the module whose forward calls it), the user's
file and line, the shape and dtype it produced, and its literal arguments. Edges follow tensors; in-place ops
are resolved so that later readers of a mutated tensor read the in-place node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from auditor.graph import ops

if TYPE_CHECKING:
    import torch

INPUT = "input"
MODULE = "module"
CALL = "call"
PARAM = "param"
OUTPUT = "output"


@dataclass(eq=False)
class Node:
    name: str
    kind: str  # INPUT, MODULE, CALL, PARAM or OUTPUT
    op: str  # canonical op, see auditor.graph.ops
    target: str  # what was called, for people: "nn.Conv2d", "F.relu", "Tensor.relu_", "aten.add.Tensor"
    module: str | None = None  # qualified module name: the module itself, or the one whose forward made the call
    module_type: str | None = None  # class name of that module (kind MODULE only), e.g. "Conv2d"
    obj: Any = None  # the live nn.Module for MODULE nodes, the tensor for PARAM nodes, when the capture has it
    inputs: list[Node] = field(default_factory=list)
    users: list[Node] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)  # literal arguments / module hyper-parameters
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # own weights: "weight", "bias", "weight_hh_l0"
    inplace: bool = False
    shape: tuple[int, ...] | None = None  # of the (first) tensor produced
    dtype: str | None = None
    file: str | None = None
    line: int | None = None
    error: str | None = None  # the op failed when run (e.g. a residual add with mismatched operands)
    # computed from parameters and constants alone, no model input flows in (`self.w.t()`, an expert's slice of a
    # fused weight, `torch.ones(...)`): a weight or a constant to the ops that read it, not a value (set by link)
    parametric: bool = False
    meta: dict[str, Any] = field(default_factory=dict)  # capture-specific handles, e.g. "fx_node"

    def __repr__(self) -> str:
        return f"Node({self.name}: {self.op} {self.target} @ {self.module!r})"

    def is_(self, *op_names: str | Iterable[str]) -> bool:
        """Whether the op is one of the given names or sets of names."""
        for item in op_names:
            if (self.op == item) if isinstance(item, str) else (self.op in item):
                return True
        return False

    @property
    def is_module(self) -> bool:
        return self.kind == MODULE

    @property
    def tensor_inputs(self) -> list[Node]:
        return [n for n in self.inputs if n.kind != PARAM]

    @property
    def input_shapes(self) -> list[tuple[int, ...] | None]:
        return [n.shape for n in self.tensor_inputs]

    def label(self) -> str:
        """How messages name the node: "Dropout `head.drop`" or "`F.relu` in `block`"."""
        if self.kind == MODULE:
            return f"{self.module_type} `{self.module}`"
        if self.kind == INPUT:
            return f"input `{self.name}`"
        owner = f" in `{self.module}`" if self.module else ""
        return f"`{self.target}`{owner}"


@dataclass
class AuditGraph:
    """A captured model: nodes in execution order plus what the rules need around them."""

    nodes: list[Node]
    method: str  # "fx", "export" or "hooks"
    model: Any = None  # the nn.Module audited (None for a loaded .pt2 program)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. "graph_module" for fx captures
    # Where each submodule was created (qualified name -> (file, line)), containers included: where a finding
    # about a whole stack of layers points.
    sites: dict[str, tuple[str, int]] = field(default_factory=dict)
    stopped: str | None = None  # a partial graph: where the forward pass stopped (also one of the notes)

    def __post_init__(self) -> None:
        self._by_name = {n.name: n for n in self.nodes}

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, name: str) -> Node:
        return self._by_name[name]

    def find(self, *op_names: str | Iterable[str]) -> list[Node]:
        return [n for n in self.nodes if n.is_(*op_names)]

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == INPUT]

    @property
    def output(self) -> Node | None:
        return next((n for n in reversed(self.nodes) if n.kind == OUTPUT), None)

    @property
    def ran_cleanly(self) -> bool:
        """Whether the whole forward pass ran with no op failing: not partial, no merge stepped over."""
        return self.stopped is None and not any(n.error for n in self.nodes)

    def successors(self, node: Node, through: Iterable[str] = ops.TRANSPARENT) -> list[Node]:
        """The nodes that consume `node`'s value, looking through ops in `through` (reshapes, getitem...)."""
        return _walk(node, lambda n: n.users, set(through))

    def predecessors(self, node: Node, through: Iterable[str] = ops.TRANSPARENT) -> list[Node]:
        """The nodes that produced `node`'s tensor inputs, looking through ops in `through`."""
        return _walk(node, lambda n: n.tensor_inputs, set(through))

    def depends_on(self, node: Node, other: Node) -> bool:
        """Whether `node`'s value is computed from `other`'s (`other` is an ancestor of `node`)."""
        stack, seen = list(node.tensor_inputs), set()
        while stack:
            n = stack.pop()
            if n is other:
                return True
            if id(n) not in seen:
                seen.add(id(n))
                stack.extend(n.tensor_inputs)
        return False

    def chains(self, members: Iterable[Node]) -> list[list[Node]]:
        """`members` grouped along the dataflow: two are in one group when one is the nearest member upstream of
        the other (reachable without passing a third), as the layers of one MLP are; in execution order."""
        chosen = {id(n) for n in members}
        parent: dict[int, int] = {key: key for key in chosen}

        def root(key: int) -> int:
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        nearest: dict[int, frozenset[int]] = {}  # node -> the members nearest upstream of it (itself, for one)
        for n in self.nodes:
            upstream = frozenset().union(*(nearest.get(id(i), frozenset()) for i in n.inputs))
            if id(n) in chosen:
                for key in upstream:
                    parent[root(key)] = root(id(n))
                upstream = frozenset({id(n)})
            nearest[id(n)] = upstream
        groups: dict[int, list[Node]] = {}
        for n in self.nodes:
            if id(n) in chosen:
                groups.setdefault(root(id(n)), []).append(n)
        return list(groups.values())

    def link(self) -> None:
        """Rebuild users from inputs (captures fill inputs only), resolve in-place aliasing, and mark the
        parametric nodes."""
        _resolve_inplace(self.nodes)
        for n in self.nodes:
            n.users = []
        for n in self.nodes:
            for i in n.inputs:
                if n not in i.users:
                    i.users.append(n)
            n.parametric = n.kind == PARAM or (n.kind in (CALL, MODULE) and all(i.parametric for i in n.inputs))
        self._by_name = {n.name: n for n in self.nodes}


def _walk(start: Node, step: Callable[[Node], list[Node]], through: set[str]) -> list[Node]:
    found: list[Node] = []
    seen: set[int] = set()
    stack = list(reversed(step(start)))
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.op in through:
            stack.extend(reversed(step(n)))
        else:
            found.append(n)
    return found


def _resolve_inplace(nodes: list[Node]) -> None:
    """After `x.relu_()`, later readers of `x` read the relu: re-point them so edges follow values."""
    latest: dict[int, Node] = {}
    for n in nodes:
        n.inputs = [latest.get(id(i), i) for i in n.inputs]
        if n.inplace and n.tensor_inputs:
            mutated = n.tensor_inputs[0]
            latest[id(mutated)] = n
            for alias, current in list(latest.items()):
                if current is mutated:
                    latest[alias] = n
