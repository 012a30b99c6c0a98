"""Code that depends on `self.training`: the trace runs in eval mode (as the audit's did), which bakes the flag in.

`restore_training_flags` traces the model again in train mode and, where the two graphs differ only in such a
value, reads it from the owning module's `training` attribute at run time, so the fixed model's dropout still
follows `model.train()` / `model.eval()`.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Iterator

import torch.fx as fx
import torch.nn as nn

from auditor.fixing.rewrite import get_training_flag


def restore_training_flags(gm: fx.GraphModule, model: nn.Module, notes: list[str], given: int) -> None:
    """Captures trace in eval mode, which bakes `self.training` into the graph: `F.dropout(x, p,
    self.training)` becomes `training=False`, `dropout_p=p if self.training else 0.0` becomes 0.0. Trace again
    in train mode and, where the two differ only in such a value, compute it from the owning module's
    `training` at run time instead (the flag itself, or `training * p`). `given`: how many positional inputs the
    forward receives (its other defaulted parameters are traced at their defaults, as the audit traced them)."""
    from auditor.capture.common import owner
    from auditor.capture.fx import trace

    try:
        with train_mode(model):
            trained = trace(model, given)
    except Exception:  # noqa: BLE001 - not traceable in train mode: keep the eval trace as it is
        notes.append("the model does not trace in train mode; the fixed code follows its eval-mode forward")
        return
    eval_nodes, train_nodes = list(gm.graph.nodes), list(trained.graph.nodes)
    if [(n.op, str(n.target)) for n in eval_nodes] != [(n.op, str(n.target)) for n in train_nodes]:
        notes.append("the forward branches on self.training; the fixed code keeps the eval-mode branch")
        return
    patches: list[tuple[fx.Node, int | str, Any]] = []
    for e, t in zip(eval_nodes, train_nodes):
        places: list[tuple[int | str, Any, Any]] = [(i, a, b) for i, (a, b) in enumerate(zip(e.args, t.args))]
        places += [(k, e.kwargs[k], t.kwargs.get(k)) for k in e.kwargs]
        for where, in_eval, in_train in places:
            if _same(in_eval, in_train):
                continue
            if not _mode_value(in_eval, in_train):
                notes.append("the forward depends on self.training; the fixed code keeps the eval-mode values")
                return
            patches.append((e, where, in_train))
    for node, where, in_train in patches:
        value = get_training_flag(gm, node, _existing_owner(gm, owner(node)))
        if not isinstance(in_train, bool):
            with gm.graph.inserting_before(node):
                value = gm.graph.call_function(operator.mul, (value, in_train))
        if isinstance(where, int):
            node.update_arg(where, value)
        else:
            node.update_kwarg(where, value)


def _mode_value(in_eval: Any, in_train: Any) -> bool:
    """A value that is `self.training` (True/False) or `p if self.training else 0`."""
    if isinstance(in_eval, bool) and isinstance(in_train, bool):
        return True
    numbers = (int, float)
    return (isinstance(in_eval, numbers) and isinstance(in_train, numbers) and not isinstance(in_eval, bool)
            and not isinstance(in_train, bool) and in_eval == 0)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        return isinstance(a, fx.Node) and isinstance(b, fx.Node) and a.name == b.name
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, slice) and isinstance(b, slice):
        return all(_same(x, y) for x, y in ((a.start, b.start), (a.stop, b.stop), (a.step, b.step)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # noqa: BLE001 - tensors and other values without a plain ==
        return a is b


def _existing_owner(gm: fx.GraphModule, owner: str) -> str:
    """The owner, or its nearest ancestor the GraphModule holds (train and eval mode are set recursively, so an
    ancestor's flag is the same)."""
    while owner:
        try:
            gm.get_submodule(owner)
            return owner
        except AttributeError:
            owner = owner.rpartition(".")[0]
    return ""


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[None]:
    """Train mode for the duration, then every module's own flag back as it was."""
    from auditor.capture import eval_mode

    with eval_mode(model):  # which restores every module's flag on the way out
        model.train()
        yield
