"""The fixed model's module tree is the user's: the same attribute names, container types and order.

torch.fx builds a GraphModule with only the modules its graph calls, under plain `nn.Module` parents. `mirror`
rebuilds that tree as the user's model has it: `nn.Sequential`, `nn.ModuleList` and `nn.ModuleDict` keep their
types (so `model.blocks[0]` and iteration work), modules the forward does not call stay (so `state_dict()` keys
of unchanged layers and the user's old checkpoints still fit), and the user's own classes become plain
`nn.Module` parents that hold the same children and tensors. After the fixes, `align_sequentials` puts the
children of a `nn.Sequential` in the order the fixed forward calls them, keeping their keys.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from auditor.capture.common import is_leaf
from auditor.fixing.rewrite import attribute

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class SequentialGraphModule(fx.GraphModule, nn.Sequential):
    """The fixed copy of a model that is an nn.Sequential: the rewritten forward, and indexing, len() and
    iteration over the children as the user's model has them."""


def mirrored(gm: fx.GraphModule, model: nn.Module) -> fx.GraphModule:
    """`gm` with its submodules, parameters and buffers as `model` holds them (the leaves are the same
    objects); attributes only the graph holds (traced tensor constants) are kept."""
    graph_only = {str(n.target): attribute(gm, str(n.target)) for n in gm.graph.nodes if n.op == "get_attr"}
    if isinstance(model, nn.Sequential):
        gm = SequentialGraphModule(gm, gm.graph, type(gm).__name__)
    gm._modules.clear()
    gm._parameters.clear()
    gm._buffers.clear()
    _copy_tree(model, gm)
    for target, value in graph_only.items():
        if value is not None and attribute(gm, target) is None:
            _place(gm, target, value)
    return gm


def _copy_tree(source: nn.Module, into: nn.Module) -> None:
    for name, child in source._modules.items():
        if child is None:
            continue
        if is_leaf(child):
            into.add_module(name, child)
            continue
        parent = container_class(child)()
        _copy_tree(child, parent)
        into.add_module(name, parent)
    for name, param in source._parameters.items():
        if param is not None:
            into.register_parameter(name, param)
    for name, buffer in source._buffers.items():
        if buffer is not None:
            into.register_buffer(name, buffer, persistent=name not in source._non_persistent_buffers_set)


def container_class(module: nn.Module) -> type[nn.Module]:
    """The torch container a module is (a user subclass of nn.Sequential counts as nn.Sequential), else
    nn.Module: what the fixed model holds in its place."""
    return next((cls for cls in type(module).__mro__ if cls in CONTAINERS), nn.Module)


def _place(root: nn.Module, target: str, value: Any) -> None:
    owner_path, _, attr = target.rpartition(".")
    owner = root
    for part in owner_path.split(".") if owner_path else []:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    if isinstance(value, nn.Parameter):
        owner.register_parameter(attr, value)
    elif isinstance(value, torch.Tensor):
        owner.register_buffer(attr, value)
    elif isinstance(value, nn.Module):
        owner.add_module(attr, value)
    else:
        setattr(owner, attr, value)


def align_sequentials(gm: fx.GraphModule) -> list[str]:
    """Order each `nn.Sequential`'s children as the fixed forward calls them (when every child is called once),
    so that calling the container computes what the fixed forward does; keys are kept, so state_dict keys do
    not change. Returns a note per container reordered."""
    first_call: dict[str, int] = {}
    calls: dict[str, int] = {}
    for index, node in enumerate(gm.graph.nodes):
        if node.op == "call_module":
            target = str(node.target)
            first_call.setdefault(target, index)
            calls[target] = calls.get(target, 0) + 1
    notes = []
    for name, module in gm.named_modules():
        if not isinstance(module, nn.Sequential) or not module._modules:
            continue
        keys = list(module._modules)
        paths = [f"{name}.{k}" if name else k for k in keys]
        if any(calls.get(p) != 1 for p in paths):
            continue
        ordered = [k for _, k in sorted(zip((first_call[p] for p in paths), keys))]
        if ordered != keys:
            children = dict(module._modules)
            module._modules.clear()
            for key in ordered:
                module._modules[key] = children[key]
            notes.append(f"`{name}` (nn.Sequential): children reordered to match the fixed forward "
                         f"({', '.join(ordered)}); their keys, and so the state_dict keys, are unchanged")
    return notes
