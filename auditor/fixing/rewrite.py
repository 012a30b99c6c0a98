"""Small, checked rewrites of a torch.fx graph: the primitives every `--fix` is built from.

Each rewrite has a read-only check (`check_move_after`, ...) that states its preconditions against the fx graph as
it is *now* and raises `CannotFix` with a reason a user can act on; the audit calls the checks to tell whether a
finding is fixable, and the rewrite calls the same check before it edits. Every edit is recorded in a `Journal`
as the few node arguments and positions it changed, so one fix can be undone without a copy of the model.

The graph is linted and recompiled once per pass over the findings (`finish`), not after every edit: that would
make --fix quadratic in the model's size. Each edit keeps the graph in topological order by construction.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch.fx as fx
import torch.nn as nn


class CannotFix(Exception):
    """A fix does not apply here; the message says why (it becomes a note on the result)."""


class Stale(CannotFix):
    """The graph changed under this finding since it was captured: retry it on a fresh capture."""


@dataclass
class Journal:
    """Undo steps of the edits made so far, each tagged with the fx nodes it touched."""

    steps: list[tuple[Callable[[], None], tuple[fx.Node, ...]]] = field(default_factory=list)

    def record(self, undo: Callable[[], None], touched: Iterable[fx.Node] = ()) -> None:
        self.steps.append((undo, tuple(touched)))

    def mark(self) -> int:
        return len(self.steps)

    def touched(self, start: int, end: int | None = None) -> set[fx.Node]:
        return {n for _, nodes in self.steps[start:end] for n in nodes}

    def undo(self, start: int, end: int | None = None) -> None:
        """Undo the steps in [start, end), latest first. Steps after `end` must not depend on them (the fix
        loop guarantees it: a fix that reads what an earlier fix of the same pass touched waits for a new pass)."""
        stop = len(self.steps) if end is None else end
        for undo, _ in reversed(self.steps[start:stop]):
            undo()
        self.steps[start:stop] = [(_nothing, ()) for _ in range(stop - start)]


def _nothing() -> None:
    pass


def snapshot(journal: Journal, nodes: Iterable[fx.Node], moved: Iterable[fx.Node] = ()) -> None:
    """Record the arguments of `nodes` and the position of `moved`, so that an edit of them can be undone; the
    nodes they read before the edit count as touched too (their users change)."""
    saved = [(n, n.args, dict(n.kwargs)) for n in dict.fromkeys(nodes)]
    places = [(n, n.prev) for n in moved]
    before = [i for n, _, _ in saved for i in n.all_input_nodes]

    def undo() -> None:
        for node, before in reversed(places):
            before.append(node)
        for node, args, kwargs in saved:
            node.args, node.kwargs = args, kwargs

    journal.record(undo, [n for n, _, _ in saved] + [n for n, _ in places] + before)


# --- checks (read-only) ----------------------------------------------------------------------------------------


def tensor_input(node: fx.Node) -> fx.Node:
    """The node's first argument, which must be a graph value (the tensor a unary op consumes)."""
    first = node.args[0] if node.args else None
    if not isinstance(first, fx.Node):
        raise CannotFix(f"`{node.name}` has no tensor input to rewire")
    return first


def exclusive_path(start: fx.Node, end: fx.Node, limit: int = 64, extra: set[fx.Node] | None = None) -> list[fx.Node]:
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


def check_move_after(gm: fx.GraphModule, node: fx.Node, anchor: fx.Node) -> tuple[list[fx.Node], list[fx.Node]]:
    """Whether the unary op `node` can move to right after `anchor`: (the path from `node` to `anchor`, the
    later readers of `node`'s value that must read the moved node: readers of a value `anchor` mutates in place)."""
    source = tensor_input(node)
    if not is_inplace(gm, anchor):
        return exclusive_path(node, anchor), []
    path = _path(node, anchor)
    order = _order(node, anchor)
    late = [u for u in node.users if u is not path[1] and u not in order]
    if len(source.users) > 1:
        raise CannotFix(f"`{anchor.name}` works in place and `{source.name}` is also read elsewhere: moving it would change those readers")
    return exclusive_path(node, anchor, extra=set(late)), late


def check_move_before(gm: fx.GraphModule, node: fx.Node, anchor: fx.Node) -> list[fx.Node]:
    """Whether the unary op `node` can move to right before `anchor` (upstream of it); returns the path."""
    path = exclusive_path(anchor, node)
    source = tensor_input(node)
    tensor_input(anchor)
    between = set(_order(anchor, node))
    if any(a in between or a is anchor for a in node.all_input_nodes if a is not source):
        raise CannotFix(f"`{node.name}` depends on values computed after `{anchor.name}`")
    return path


def is_inplace(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a node mutates its input (`x.relu_()`, `F.relu(x, inplace=True)`, `nn.ReLU(inplace=True)`)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    return name.endswith("_") and not name.endswith("__") or name in ("iadd", "isub", "imul", "itruediv")


def _path(start: fx.Node, end: fx.Node, limit: int = 64) -> list[fx.Node]:
    stack = [[start]]
    while stack:
        path = stack.pop()
        if path[-1] is end:
            return path
        if len(path) <= limit:
            stack.extend(path + [u] for u in path[-1].users)
    raise Stale(f"`{end.name}` is no longer downstream of `{start.name}`")


def _order(start: fx.Node, end: fx.Node, limit: int = 4096) -> list[fx.Node]:
    """The nodes strictly between `start` and `end` in graph order (`end` must come after `start`)."""
    between: list[fx.Node] = []
    node = start.next
    while node is not end:
        if node.op == "root" or len(between) > limit:
            raise Stale(f"`{end.name}` no longer follows `{start.name}`")
        between.append(node)
        node = node.next
    return between


# --- edits ---------------------------------------------------------------------------------------------------


def move_after(gm: fx.GraphModule, node: fx.Node, anchor: fx.Node, journal: Journal) -> None:
    """Move a unary op (a dropout) from before `anchor` to right after it: `node -> ... -> anchor -> users`
    becomes `... -> anchor -> node -> users`. When `anchor` works in place (`x.relu_()`), later readers of
    `node`'s value read the mutated value: they read the moved node afterwards."""
    _, late = check_move_after(gm, node, anchor)
    source = tensor_input(node)
    anchor_users = [u for u in anchor.users if u is not node]
    snapshot(journal, [node, *node.users, *anchor_users], moved=[node])
    node.replace_all_uses_with(source, delete_user_cb=lambda user: user not in late)
    node.update_arg(0, anchor)
    anchor.append(node)
    for user in anchor_users:
        user.replace_input_with(anchor, node)


def move_before(gm: fx.GraphModule, node: fx.Node, anchor: fx.Node, journal: Journal) -> None:
    """Move a unary op (a norm) from after `anchor` to right before it: `x -> anchor -> ... -> node -> users`
    becomes `x -> node -> anchor -> ... -> users`."""
    check_move_before(gm, node, anchor)
    source = tensor_input(node)
    target_input = tensor_input(anchor)
    snapshot(journal, [node, anchor, *node.users], moved=[node])
    node.replace_all_uses_with(source)
    node.update_arg(0, target_input)
    anchor.prepend(node)
    anchor.update_arg(0, node)


def bypass(node: fx.Node, journal: Journal) -> None:
    """Take a unary op out of the dataflow: its users read its input instead. The node stays, unused, until
    `erase_unused` (so the edit can be undone by restoring its users' arguments)."""
    source = tensor_input(node)
    snapshot(journal, list(node.users))
    node.replace_all_uses_with(source)


def insert_before(gm: fx.GraphModule, anchor: fx.Node, op: str, target: Any, args: tuple[Any, ...],
                  kwargs: dict[str, Any] | None, journal: Journal) -> fx.Node:
    """A new node (`call_module`, `call_function` or `call_method`) placed right before `anchor`."""
    with gm.graph.inserting_before(anchor):
        node = gm.graph.create_node(op, target, args, kwargs or {})
    for key in ("nn_module_stack", "user_frame"):  # it belongs to the same module and line as its anchor
        if key in anchor.meta:
            node.meta[key] = anchor.meta[key]
    journal.record(lambda: gm.graph.erase_node(node), [node, anchor])
    return node


def replace_input(user: fx.Node, old: fx.Node, new: fx.Node, journal: Journal) -> None:
    """`user` reads `new` where it read `old`."""
    snapshot(journal, [user])
    user.replace_input_with(old, new)


def add_module(gm: fx.GraphModule, wanted: str, module: nn.Module, journal: Journal) -> str:
    """Register `module` under `wanted` (a qualified name), or under `wanted_1`, `wanted_2`... when taken. An
    empty nn.Sequential already at `wanted` (a shortcut left empty where a projection was needed) receives the
    children of a new nn.Sequential instead, so the user's own attribute holds the fix."""
    existing = attribute(gm, wanted)
    if isinstance(existing, nn.Sequential) and not existing._modules and isinstance(module, nn.Sequential):
        for key, child in module._modules.items():
            existing.add_module(key, child)
        journal.record(existing._modules.clear)
        return wanted
    name = wanted
    counter = 0
    while _is_attribute(gm, name):
        counter += 1
        name = f"{wanted}_{counter}"
    if not gm.add_submodule(name, module):
        raise CannotFix(f"cannot add a submodule named `{name}`")
    journal.record(lambda: gm.delete_submodule(name))
    return name


def get_training_flag(gm: fx.GraphModule, before: fx.Node, owner: str) -> fx.Node:
    """A `get_attr` of `<owner>.training`: the module's own train/eval flag read at run time."""
    target = f"{owner}.training" if owner else "training"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fx warns that a bool is not a parameter or buffer; it is intended
        with gm.graph.inserting_before(before):
            return gm.graph.get_attr(target)


def erase_unused(gm: fx.GraphModule, nodes: Iterable[fx.Node]) -> list[str]:
    """Erase the bypassed nodes that nothing reads any more; returns the modules no call uses after that."""
    called_before = {str(n.target) for n in nodes if n.op == "call_module"}
    for node in nodes:
        if node.graph is gm.graph and not node.users:
            gm.graph.erase_node(node)
    still_called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    return sorted(called_before - still_called)


def finish(gm: fx.GraphModule) -> None:
    """Check the graph and regenerate its code (once per pass)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.graph.lint()
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


def _is_attribute(gm: fx.GraphModule, qualname: str) -> bool:
    return attribute(gm, qualname) is not None


def attribute(root: nn.Module, qualname: str) -> Any:
    """The attribute at a qualified name (a submodule, tensor or flag), or None."""
    owner, _, attr = qualname.rpartition(".")
    try:
        module = root.get_submodule(owner) if owner else root
    except AttributeError:
        return None
    return getattr(module, attr, None)
