"""What a model's traced forward says about each of its arguments, read without computing anything.

One `torch.fx` trace answers, per argument: the layer that first consumes it and what happens on the way
(a transpose to undo, a concatenation that shares the channels), or another kind of first use (`x @ W` with a
weight, `adj @ h` with another argument's rows, `t[:, None] * freqs`: one value per sample, an RNN's state);
and the fixed-size tables its data is added to (a learned position embedding `pos_emb[:, :T]` or `x + pos_emb`,
an `nn.Embedding` of positions), which bound or fix its length.
"""

from __future__ import annotations

import operator
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

# The layers whose constructor says what their input must be (loading/guesses.layer_specs reads each of them).
INPUT_LAYERS: tuple[type, ...] = (
    nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.EmbeddingBag, nn.RNNBase, nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer, nn.TransformerEncoder, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.InstanceNorm2d, nn.GroupNorm, nn.MultiheadAttention,
)
_MATMULS = {"mm", "matmul", "bmm", "spmm", "sparse.mm", "linear"}
_CATS = {"cat", "concat", "concatenate"}
_SHAPE_READS = {"size", "dim", "shape", "numel", "len", "device", "dtype"}  # a shape or place, not the argument's data
_BINARY = {"mul", "add", "sub", "truediv", "mul_", "add_"}
_SHAPE_KEEPING = {"relu", "relu_", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "softplus", "mish", "dropout",
                  "layer_norm", "contiguous"}
_SHAPE_KEEPING_MODULES = (nn.modules.activation.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU,
                          nn.Softplus, nn.Mish, nn.modules.dropout._DropoutNd, nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.Identity)


@dataclass(frozen=True)
class Table:
    """A fixed-size table an argument's data is added to: `rows` bound its length when sliced to it
    (`pos_emb[:, :T]`, an `nn.Embedding` of `arange(T)`), or fix it (`x + pos_emb`; one fewer with a class
    token). `stride`: the downsampling between the argument and the add (a patch embedding's)."""

    name: str
    rows: int
    sliced: bool
    stride: int | None = 1  # None: unknown (a table found by its name, without a trace)

    def __str__(self) -> str:
        return f"{self.name}[{self.rows}]"


@dataclass(frozen=True)
class Use:
    """How an argument is first used. `role`: `layer` (fed to `module`), `matrix` (multiplied by a weight of
    `features` input rows), `square` (multiplied with the rows of the argument `partner`: an adjacency),
    `per_sample` (one value per sample, broadcast against a table: a diffusion timestep), `state` (an RNN's
    initial state, item `item` of its `(h0, c0)` or the whole of it when None)."""

    role: str
    label: str
    module: nn.Module | None = None
    steps: tuple[tuple[Any, ...], ...] = ()  # ("transpose", a, b), ("permute", dims), ("unsqueeze", dim): undone in reverse
    split: tuple[int, int, int] | None = None  # (dim, parts, taken): concatenated along dim with `parts` arguments and others `taken` wide
    item: int | None = None
    features: int | None = None
    partner: str | None = None


@dataclass
class Forward:
    """The traced forward of a model (`read_forward`), answering per argument name."""

    gm: Any
    placeholders: dict[str, Any]
    data_from: dict[Any, frozenset[str]] = field(default_factory=dict)  # node -> the arguments whose data reach it

    def use(self, name: str) -> Use | None:
        start = self.placeholders.get(name)
        return None if start is None else _first_use(self, start, name)

    def tables(self, name: str) -> list[Table]:
        return _tables(self, name)

    def rnn_after(self, module: nn.Module) -> nn.RNNBase | None:
        """The first RNN the output of `module` reaches (whether tokens should be time-major)."""
        starts = [n for n in self.gm.graph.nodes if n.op == "call_module" and self.gm.get_submodule(str(n.target)) is module]
        for node in _downstream(starts):
            if node.op == "call_module" and isinstance(self.gm.get_submodule(str(node.target)), nn.RNNBase):
                return self.gm.get_submodule(str(node.target))
        return None


def read_forward(model: nn.Module) -> Forward | None:
    """The model's forward traced with torch.fx, or None when it cannot be traced (data-dependent control flow,
    a shape assertion): inference then falls back to names and registration order."""
    from auditor.capture.fx import trace  # local: inference is the only user outside the capture itself

    try:
        gm = trace(model)
    except Exception:  # noqa: BLE001 - untraceable
        return None
    placeholders = {str(n.target).lstrip("*"): n for n in gm.graph.nodes if n.op == "placeholder"}
    forward = Forward(gm, placeholders)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            forward.data_from[node] = frozenset({str(node.target).lstrip("*")})
        elif _op(node) in _SHAPE_READS:
            forward.data_from[node] = frozenset()
        else:
            forward.data_from[node] = frozenset().union(*(forward.data_from.get(i, frozenset()) for i in node.all_input_nodes))
    return forward


def _first_use(forward: Forward, start: Any, name: str) -> Use | None:
    gm = forward.gm
    frontier: deque[tuple[Any, Any, tuple[tuple[Any, ...], ...], tuple[int, int, int] | None, bool]] = deque(
        (user, start, (), None, False) for user in start.users)
    seen = set()
    while frontier:
        node, came_from, steps, split, raised = frontier.popleft()
        if node in seen:
            continue
        seen.add(node)
        op = _op(node)
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if isinstance(module, nn.RNNBase) and node.args and node.args[0] is not came_from:
                state = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
                item = state.index(came_from) if isinstance(state, (tuple, list)) and came_from in state else None
                return Use("state", f"{type(module).__name__}({module.input_size}, {module.hidden_size})", module, item=item)
            if isinstance(module, INPUT_LAYERS):
                return Use("layer", layer_label(module), module, steps, split)
        elif op in _MATMULS:
            use = _matmul_use(forward, node, came_from, name, steps, split)
            if use is not None:
                return use
        elif raised and op in _BINARY and _meets_other_data(forward, node, came_from, name):
            return Use("per_sample", f"`{name}` broadcast per sample")
        step = _step(node, came_from)
        if step is not None:
            steps = (*steps, step)
            raised = raised or step[0] == "unsqueeze"
        elif op in ("view", "reshape", "flatten") or (node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), (nn.Flatten, nn.Unflatten))):
            raised = raised or _is_column(node)
            steps = ()  # a reshape cannot be undone: the consumer's shape is taken as the argument's
        if op in _CATS:
            split = _cat_split(forward, node) or split
        frontier.extend((user, node, steps, split, raised) for user in node.users)
    return None


def _matmul_use(forward: Forward, node: Any, came_from: Any, name: str, steps: tuple[tuple[Any, ...], ...],
                split: tuple[int, int, int] | None) -> Use | None:
    """`x @ W` (W a weight: x's last dim is W's rows; `F.linear(x, W)`: W's columns), or `adj @ h` with h made
    from another argument (adj is square over h's rows)."""
    operands = list(node.args[:2])
    if len(operands) < 2 or operands[0] is not came_from:
        return None
    other = operands[1]
    read = other
    while getattr(read, "op", None) == "call_method" and read.target in ("t", "transpose") and read.args:
        read = read.args[0]  # `x @ self.W.t()`
    weight = _weight(forward.gm, read)
    if weight is not None and weight.dim() == 2:
        rows_first = (_op(node) == "linear") == (read is not other)  # F.linear(x, W) and x @ W.t() read W's columns
        features = weight.shape[0] if rows_first else weight.shape[1]
        return Use("matrix", f"`{read.target}` {list(weight.shape)} ({_op(node)})", features=int(features), steps=steps, split=split)
    partners = forward.data_from.get(other, frozenset()) - {name}
    if hasattr(other, "op") and partners:
        partner = min(partners, key=lambda p: list(forward.placeholders).index(p))
        return Use("square", f"`{_op(node)}` with rows of `{partner}`", partner=partner)
    return None


def _weight(gm: Any, node: Any) -> torch.Tensor | None:
    """The parameter or buffer an fx node reads."""
    if getattr(node, "op", None) != "get_attr":
        return None
    try:
        value = gm.get_parameter(str(node.target))
    except AttributeError:
        try:
            value = gm.get_buffer(str(node.target))
        except AttributeError:
            return None
    return value if isinstance(value, torch.Tensor) else None


def _meets_other_data(forward: Forward, node: Any, came_from: Any, name: str) -> bool:
    """A binary op whose other operand is a tensor not made from this argument (a frequency table)."""
    others = [a for a in node.args if a is not came_from and hasattr(a, "op")]
    return any(name not in forward.data_from.get(o, frozenset()) and _op(o) not in _SHAPE_READS for o in others)


def _step(node: Any, came_from: Any) -> tuple[Any, ...] | None:
    """A shape change that can be undone on a proposed spec: transpose, permute, unsqueeze (`x[:, None]`)."""
    op, args = _op(node), node.args
    if not args or args[0] is not came_from:
        return None
    if op == "transpose" and len(args) == 3 and all(isinstance(a, int) for a in args[1:]):
        return ("transpose", args[1], args[2])
    if op == "permute":
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        if dims and all(isinstance(d, int) for d in dims):
            return ("permute", tuple(dims))
    if op == "unsqueeze" and len(args) == 2 and isinstance(args[1], int):
        return ("unsqueeze", args[1])
    if op == "getitem" and isinstance(args[1], tuple) and None in args[1] and Ellipsis not in args[1]:
        if args[1].count(None) == 1 and all(a is None or a == slice(None) for a in args[1]):
            return ("unsqueeze", args[1].index(None))
    return None


def _is_column(node: Any) -> bool:
    """`t.view(-1, 1)`: one value per row made into a column."""
    return tuple(node.args[1:]) in ((-1, 1), ((-1, 1),))


def _cat_split(forward: Forward, node: Any) -> tuple[int, int, int] | None:
    """`torch.cat([a, b], dim=1)`: operands a layer of known width makes take that much of the consumer's size
    along dim (`self.label_emb(labels)`: the embedding's width); the operands made from the arguments otherwise
    share the rest evenly (a conditional GAN's noise is its Linear's input less the label embedding's width; a
    pair discriminator's two images have half the channels each). None where an operand is neither."""
    operands = node.args[0] if node.args else node.kwargs.get("tensors", ())
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(operands, (list, tuple)) or not isinstance(dim, int) or len(operands) < 2:
        return None
    widths = [_width(forward.gm, o, dim) for o in operands]
    shares = [o for o, w in zip(operands, widths) if w is None]
    if not shares or any(not forward.data_from.get(o) for o in shares):
        return None
    return dim, len(shares), sum(w for w in widths if w is not None)


def _width(gm: Any, node: Any, dim: int) -> int | None:
    """The size along `dim` of a layer's output, where the layer alone decides it: an Embedding's or a
    Linear's features (the last dim), a convolution's channels (dim 1)."""
    while _keeps_shape(gm, node):
        node = node.args[0]  # `F.relu(self.pts(x))`: the Linear decides
    if getattr(node, "op", None) != "call_module":
        return None
    module = gm.get_submodule(str(node.target))
    if dim == -1 and isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return module.embedding_dim
    if dim == -1 and isinstance(module, nn.Linear):
        return module.out_features
    if dim == 1 and isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    return None


def _keeps_shape(gm: Any, node: Any) -> bool:
    """An activation, dropout or norm: its output has its input's shape."""
    if getattr(node, "op", None) == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _SHAPE_KEEPING_MODULES)
    return getattr(node, "op", None) in ("call_function", "call_method") and _op(node) in _SHAPE_KEEPING and bool(node.args)


def _tables(forward: Forward, name: str) -> list[Table]:
    """Tables added to data made from argument `name`: a parameter or buffer of two or more dims, or an
    Embedding looked up at positions that are not the argument's data (`arange(T)`)."""
    gm, found = forward.gm, []
    for node in gm.graph.nodes:
        table = _table_at(forward, node)
        if table is None:
            continue
        label, rows, sliced = table
        for add, operand, cut in _adds(node):
            other = [a for a in add.args[:2] if a is not operand and hasattr(a, "op")]
            if other and name in forward.data_from.get(other[0], frozenset()):
                found.append(Table(label, rows, sliced or cut, _stride_between(forward, name, other[0])))
                break
    return found


def _table_at(forward: Forward, node: Any) -> tuple[str, int, bool] | None:
    if node.op == "get_attr":
        value = _weight(forward.gm, node)
        if value is not None and value.dim() >= 2 and value.shape[-2] > 1:
            return str(node.target), int(value.shape[-2]), False
    if node.op == "call_module":
        module = forward.gm.get_submodule(str(node.target))
        if isinstance(module, nn.Embedding) and node.args and not forward.data_from.get(node.args[0]):
            return str(node.target), module.num_embeddings, True
    return None


def _adds(table: Any) -> list[tuple[Any, Any, bool]]:
    """(add, the operand that is the table, whether it was sliced on the way) for each add the table reaches
    through slicing, unsqueeze, expand, repeat or a dtype change."""
    found: list[tuple[Any, Any, bool]] = []
    frontier, seen = [(table, u, False) for u in table.users], set()
    while frontier:
        came_from, node, cut = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        op = _op(node)
        if op in ("add", "iadd", "add_"):
            found.append((node, came_from, cut))
        elif op in ("getitem", "unsqueeze", "expand", "repeat", "to", "type_as", "float", "expand_as", "detach"):
            cut = cut or (op == "getitem" and _has_bounded_slice(node.args[1]))
            frontier.extend((node, u, cut) for u in node.users)
    return found


def _has_bounded_slice(index: Any) -> bool:
    """`[:, :T]`, `[:T]`: a slice with a stop."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, slice) and i.stop is not None for i in items)


def _stride_between(forward: Forward, name: str, node: Any) -> int:
    """The product of the strides of the convolutions and poolings between argument `name` and `node`."""
    strides: dict[Any, int] = {}
    for n in forward.gm.graph.nodes:
        if name not in forward.data_from.get(n, frozenset()):
            continue
        inherited = max((strides.get(i, 1) for i in n.all_input_nodes), default=1)
        strides[n] = inherited * _own_stride(forward.gm, n)
        if n is node:
            return strides[n]
    return 1


def _own_stride(gm: Any, node: Any) -> int:
    if node.op != "call_module":
        return 1
    stride = getattr(gm.get_submodule(str(node.target)), "stride", 1)
    stride = stride[0] if isinstance(stride, (tuple, list)) else stride
    return stride if isinstance(stride, int) and stride > 0 else 1


def _downstream(starts: list[Any]) -> list[Any]:
    frontier, seen, order = [u for n in starts for u in n.users], set(), []
    while frontier:
        node = frontier.pop(0)
        if node in seen:
            continue
        seen.add(node)
        order.append(node)
        frontier.extend(node.users)
    return order


def _op(node: Any) -> str:
    if not hasattr(node, "op"):
        return ""
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        if node.target is getattr and len(node.args) > 1:
            return str(node.args[1])  # `x.shape`
        if node.target in (operator.getitem,):
            return "getitem"
        name = getattr(node.target, "__name__", "")
        module = getattr(node.target, "__module__", "") or ""
        return f"sparse.{name}" if module.endswith("sparse") else name
    return ""


def layer_label(module: nn.Module) -> str:
    """`Conv2d(3, 64)`, `Embedding(1000, 64)`, `LSTM(16, 32)`: the layer and the sizes that decide its input."""
    sizes = {
        nn.modules.conv._ConvNd: ("in_channels", "out_channels"), nn.Linear: ("in_features", "out_features"),
        nn.Embedding: ("num_embeddings", "embedding_dim"), nn.EmbeddingBag: ("num_embeddings", "embedding_dim"),
        nn.RNNBase: ("input_size", "hidden_size"), nn.LayerNorm: ("normalized_shape",),
        nn.modules.batchnorm._NormBase: ("num_features",), nn.GroupNorm: ("num_groups", "num_channels"),
        nn.MultiheadAttention: ("embed_dim", "num_heads"),
    }
    for cls, names in sizes.items():
        if isinstance(module, cls):
            values = [getattr(module, n) for n in names]
            return f"{type(module).__name__}({', '.join(str(tuple(v)[0] if isinstance(v, tuple) and len(v) == 1 else v) for v in values)})"
    return type(module).__name__
