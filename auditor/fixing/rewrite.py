"""Small, checked rewrites of a torch.fx GraphModule: the primitives every `--fix` is built from.

Each primitive checks its preconditions against the fx graph as it is *now* (a rule's view of the graph may be
stale after an earlier rewrite), raises `CannotFix` with a reason a user can act on when they do not hold, and
ends with `graph.lint()` and `recompile()` so a broken graph never survives a step.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch.fx as fx
import torch.nn as nn


class CannotFix(Exception):
    """A fix does not apply here; the message says why (it becomes a note on the result)."""


class Stale(CannotFix):
    """The graph changed under this finding since it was captured: retry it on a fresh capture."""


def tensor_input(node: fx.Node) -> fx.Node:
    """The node's first argument, which must be a graph value (the tensor a unary op consumes)."""
    first = node.args[0] if node.args else None
    if not isinstance(first, fx.Node):
        raise CannotFix(f"`{node.name}` has no tensor input to rewire")
    return first


def exclusive_path(start: fx.Node, end: fx.Node, limit: int = 16, extra: set[fx.Node] | None = None) -> list[fx.Node]:
    """The nodes from `start` to `end` (both included) along single-user links. Raises Stale when `end` is not
    downstream of `start`, CannotFix when a value on the way has other users (moving would change them too);
    `extra` users of `start` are accepted."""
    path = [start]
    node = start
    while node is not end:
        users = [u for u in node.users if node is not start or u not in (extra or ())]
        if not users:
            raise Stale(f"`{end.name}` is no longer downstream of `{start.name}`")
        if len(users) > 1:
            names = ", ".join(f"`{u.name}`" for u in users)
            raise CannotFix(f"the output of `{node.name}` is also used elsewhere ({names}); rewire it by hand")
        node = users[0]
        path.append(node)
        if len(path) > limit:
            raise Stale(f"`{end.name}` is not near `{start.name}`")
    return path


def move_after(gm: fx.GraphModule, node: fx.Node, anchor: fx.Node) -> None:
    """Move a unary op (a dropout) from before `anchor` to right after it: `node -> ... -> anchor -> users`
    becomes `... -> anchor -> node -> users`. The path between them must be exclusive, except that when
    `anchor` works in place (`x.relu_()`), later readers of `node`'s value read the mutated value: they read
    the moved node afterwards."""
    source = tensor_input(node)
    late: list[fx.Node] = []
    if is_inplace(gm, anchor):
        path = _path(node, anchor)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        late = [u for u in node.users if u is not path[1] and order[u] > order[anchor]]
        if len(source.users) > 1:
            raise CannotFix(f"`{anchor.name}` works in place and `{source.name}` is also read elsewhere: moving it would change those readers")
        exclusive_path(node, anchor, extra=set(late))
    else:
        exclusive_path(node, anchor)
    anchor_users = [u for u in anchor.users if u is not node]
    node.replace_all_uses_with(source, delete_user_cb=lambda user: user not in late)
    node.update_arg(0, anchor)
    anchor.append(node)
    for user in anchor_users:
        user.replace_input_with(anchor, node)
    finish(gm)


def is_inplace(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a node mutates its input (`x.relu_()`, `F.relu(x, inplace=True)`, `nn.ReLU(inplace=True)`)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    return name.endswith("_") and not name.endswith("__") or name in ("iadd", "isub", "imul", "itruediv")


def _path(start: fx.Node, end: fx.Node, limit: int = 16) -> list[fx.Node]:
    stack = [[start]]
    while stack:
        path = stack.pop()
        if path[-1] is end:
            return path
        if len(path) <= limit:
            stack.extend(path + [u] for u in path[-1].users)
    raise Stale(f"`{end.name}` is no longer downstream of `{start.name}`")


def move_before(gm: fx.GraphModule, node: fx.Node, anchor: fx.Node) -> None:
    """Move a unary op (a norm) from after `anchor` to right before it: `x -> anchor -> ... -> node -> users`
    becomes `x -> node -> anchor -> ... -> users`."""
    exclusive_path(anchor, node)
    source = tensor_input(node)
    target_input = tensor_input(anchor)
    extra = [a for a in node.all_input_nodes if a is not source]
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    if any(order[a] > order[anchor] for a in extra):
        raise CannotFix(f"`{node.name}` depends on values computed after `{anchor.name}`")
    node.replace_all_uses_with(source)
    node.update_arg(0, target_input)
    anchor.prepend(node)
    anchor.update_arg(0, node)
    finish(gm)


def remove(gm: fx.GraphModule, node: fx.Node) -> None:
    """Take a unary op out of the graph: its users read its input instead."""
    node.replace_all_uses_with(tensor_input(node))
    gm.graph.erase_node(node)
    finish(gm)


def add_module(gm: fx.GraphModule, wanted: str, module: nn.Module) -> str:
    """Register `module` under `wanted` (a qualified name), or under `wanted_1`, `wanted_2`... when taken."""
    existing = dict(gm.named_modules())
    name = wanted
    counter = 0
    while name in existing or _is_attribute(gm, name):
        counter += 1
        name = f"{wanted}_{counter}"
    if not gm.add_submodule(name, module):
        raise CannotFix(f"cannot add a submodule named `{name}`")
    return name


def insert_before(gm: fx.GraphModule, anchor: fx.Node, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> fx.Node:
    """A new node (`call_module`, `call_function` or `call_method`) placed right before `anchor`."""
    with gm.graph.inserting_before(anchor):
        node = gm.graph.create_node(op, target, args, kwargs or {})
    for key in ("nn_module_stack", "user_frame"):  # it belongs to the same module and line as its anchor
        if key in anchor.meta:
            node.meta[key] = anchor.meta[key]
    return node


def get_training_flag(gm: fx.GraphModule, before: fx.Node, owner: str) -> fx.Node:
    """A `get_attr` of `<owner>.training`: the module's own train/eval flag read at run time."""
    target = f"{owner}.training" if owner else "training"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fx warns that a bool is not a parameter or buffer; it is intended
        with gm.graph.inserting_before(before):
            return gm.graph.get_attr(target)


def finish(gm: fx.GraphModule) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()


def ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack.extend(current.all_input_nodes)
    return seen


def users_of(nodes: Iterable[fx.Node]) -> set[fx.Node]:
    return {u for n in nodes for u in n.users}


def _is_attribute(gm: fx.GraphModule, qualname: str) -> bool:
    owner, _, attr = qualname.rpartition(".")
    try:
        module = gm.get_submodule(owner) if owner else gm
    except AttributeError:
        return False
    return hasattr(module, attr)
