"""What the three captures share: which modules are atomic nodes, and how a module or a call becomes a Node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
import torch.nn as nn

from auditor.graph import CALL, MODULE, Node, ops

if TYPE_CHECKING:
    import torch.fx as fx

Site = tuple[str, int]
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_SIMPLE = (int, float, bool, str, tuple, type(None))


def is_leaf(module: nn.Module) -> bool:
    """A module the graph shows as one node: torch.nn's own modules (as fx sees them), and user subclasses
    that keep a torch.nn atom's forward (`class MyConv(nn.Conv2d): pass`)."""
    if isinstance(module, _CONTAINERS):
        return False
    if type(module).__module__.startswith(("torch.nn.", "torch.ao.nn.")):
        return True
    forward_module = getattr(type(module).forward, "__module__", "") or ""
    return forward_module.startswith("torch.nn.") and op_of_module(module) is not None


def op_of_module(module: nn.Module) -> str | None:
    names = [cls.__name__ for cls in type(module).__mro__ if cls.__module__.startswith(("torch.nn.", "torch.ao.nn."))]
    return ops.op_for_module_class(names)


def owner(n: fx.Node) -> str:
    """The module whose forward made this traced call: the innermost entry of its nn_module_stack ("" for the
    root), as fx and export record it."""
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    qualname, _ = list(stack.values())[-1]
    return str(qualname)


def module_node(name: str, qualname: str, module: nn.Module | None, class_name: str, site: Site | None) -> Node:
    """A MODULE node for a call of `module`; hyper-parameters and own weights come from the live module."""
    op = op_of_module(module) if module is not None else ops.op_for_module_class([class_name])
    if op is None:
        has_children = module is not None and any(True for _ in module.children())
        op = ops.OPAQUE if has_children else class_name.lower()
    node = Node(name=name, kind=MODULE, op=op, target=f"nn.{class_name}", module=qualname, module_type=class_name)
    if module is not None:
        node.obj = module
        node.attrs = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and isinstance(v, _SIMPLE)}
        node.params = {k: p for k, p in module.named_parameters() if p is not None}
        node.inplace = bool(node.attrs.get("inplace", False))
    if site is not None:
        node.file, node.line = site
    return node


def call_node(name: str, op_name: str, target: str, owner: str | None, args: Iterable[Any], kwargs: dict[str, Any], is_value: Any) -> Node:
    """A CALL node for a function or method call; literal arguments become attrs (by the op's positional names)."""
    op, inplace = ops.op_for_name(op_name)
    node = Node(name=name, kind=CALL, op=op, target=target, module=owner)
    positional = ops.positional_names(op)
    tensor_args: list[str] = []  # the named arguments that received a tensor (a weight, a bias...), not a literal
    for index, value in enumerate(args):
        if index < len(positional):
            if _is_literal(value, is_value):
                node.attrs[positional[index]] = value
            else:
                tensor_args.append(positional[index])
    for key, value in kwargs.items():
        if _is_literal(value, is_value):
            node.attrs[key] = value
        else:
            tensor_args.append(key)
    node.meta["tensor_args"] = tensor_args
    node.inplace = inplace or bool(node.attrs.get("inplace", False))
    return node


def _is_literal(value: Any, is_value: Any) -> bool:
    if is_value(value) or isinstance(value, torch.Tensor):
        return False
    if isinstance(value, (list, tuple)):
        return all(_is_literal(v, is_value) for v in value)
    return isinstance(value, _SIMPLE + (list,))


def describe_value(value: Any) -> tuple[tuple[int, ...] | None, str | None]:
    """Shape and dtype of the first tensor in a (possibly nested) value."""
    tensor = first_tensor(value)
    if tensor is None:
        return None, None
    return tuple(int(d) for d in tensor.shape), str(tensor.dtype).replace("torch.", "")


def iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested value (tuples, lists, dicts such as Hugging Face outputs), in order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_tensors(item)


def first_tensor(value: Any) -> torch.Tensor | None:
    return next(iter_tensors(value), None)


def call_label(func: Any, name: str) -> str:
    """How an intercepted call reads in messages: `Tensor.relu_` for methods, else as `function_label`."""
    qualname = getattr(func, "__qualname__", "") or ""
    if qualname.startswith(("TensorBase.", "Tensor.")):
        return f"Tensor.{name}"
    return function_label(func)


def function_label(fn: Any) -> str:
    """How a called function reads in messages: `F.relu`, `torch.cat`, `operator.add`."""
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", repr(fn))
    if module in ("torch.nn.functional", "torch._C._nn"):  # F.linear and friends are bound from torch._C._nn
        return f"F.{name}"
    if module.startswith("torch") or module == "" or module is None:
        return f"torch.{name}"
    if module == "_operator":
        return f"operator.{name}"
    return f"{module}.{name}"
