"""The capture of last resort: one real forward pass, watched.

Module hooks see every call of an atomic module; a TorchFunctionMode sees the functions and tensor methods the
user's forwards call between them (F.relu, `x + y`, torch.cat), which plain hooks would miss. Edges follow
tensor identity (every produced tensor is kept alive until the end so ids stay unique; an in-place op re-binds
its tensor to itself). Works on anything that runs, including data-dependent control flow (the branch taken).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from auditor.capture.common import Site, call_label, call_node, describe_value, is_leaf, iter_tensors, module_node
from auditor.capture.forward import Attempt, ForwardFailure, Recovery, is_recoverable, mark_partial, run_recovering, step_over
from auditor.graph import INPUT, OUTPUT, PARAM, AuditGraph, Node
from auditor.locations import user_frame


def capture_hooks(model: nn.Module, inputs: tuple[Any, ...], sites: dict[str, Site]) -> AuditGraph:
    outcome = run_recovering(lambda recovery: _run(model, inputs, sites, recovery))
    stopped = outcome.stopped()
    recorder, output = outcome.state
    if stopped is None:
        recorder.add_output(output)
    graph = AuditGraph(recorder.nodes, method="hooks", model=model, sites=sites)
    mark_partial(graph, stopped)
    graph.link()
    return graph


def _run(model: nn.Module, inputs: tuple[Any, ...], sites: dict[str, Site], recovery: Recovery) -> Attempt[tuple[_Recorder, Any]]:
    """One watched forward pass; a failure ends it with what was recorded so far."""
    recorder = _Recorder(sites, recovery, dict(model.named_parameters()))
    for index, value in enumerate(inputs):
        recorder.add_input(f"input_{index}" if len(inputs) > 1 else "x", value)
    handles = []
    for qualname, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(recorder.pre_hook(qualname, module), with_kwargs=True))
        handles.append(module.register_forward_hook(recorder.post_hook(qualname, module), with_kwargs=True))
    output, failure = None, None
    try:
        with torch.no_grad(), recorder:
            output = model(*inputs)
    except ForwardFailure as exc:
        failure = exc
    except Exception as exc:  # noqa: BLE001 - a failure inside a module: name the innermost one running
        failure = recorder.failure_in_module(exc)
    finally:
        for handle in handles:
            handle.remove()
    return Attempt((recorder, output), failure, len(recorder.nodes))


@dataclass
class _ModuleCall:
    qualname: str
    module: nn.Module
    recorded: bool  # False inside an atomic module: its internals are not graph nodes
    leaf: bool
    inputs: list[Node] = field(default_factory=list)
    site: Site | None = None


class _Recorder(TorchFunctionMode):
    def __init__(self, sites: dict[str, Site], recovery: Recovery, parameters: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.sites = sites
        self.recovery = recovery
        # Parameters a forward reads itself (`x @ self.w`, `F.linear(x, self.experts[i])`): PARAM nodes, made
        # on first use, as fx's get_attr nodes are (those of atomic modules stay the modules' own).
        self.parameters = {id(p): (name, p) for name, p in parameters.items()}
        self.lengths: dict[int, int] = {}  # node id -> ops on the longest path from the inputs to it
        self.nodes: list[Node] = []
        self.producer: dict[int, Node] = {}
        self.alive: list[torch.Tensor] = []  # keeps ids unique for the whole pass
        self.calls: list[_ModuleCall] = []  # module calls in progress, outermost first
        self.leaf_depth = 0
        self.names: dict[str, int] = {}

    # --- naming and bookkeeping -------------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        base = base.replace(".", "_") or "root"
        count = self.names.get(base, 0)
        self.names[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    def _bind(self, node: Node, value: Any) -> None:
        self.lengths[id(node)] = 1 + max((self.lengths.get(id(i), 0) for i in node.inputs), default=0)
        for tensor in iter_tensors(value):
            self.producer[id(tensor)] = node
            self.alive.append(tensor)
        node.shape, node.dtype = describe_value(value)
        self.nodes.append(node)

    def _sources(self, *values: Any) -> list[Node]:
        found: list[Node] = []
        for tensor in iter_tensors(values):
            node = self.producer.get(id(tensor)) or self._parameter(tensor)
            if node is not None and all(node is not f for f in found):
                found.append(node)
        return found

    def _reads_recorded(self, *values: Any) -> bool:
        """Whether a call reads a value of the graph (a recorded op's output, an input, a parameter)."""
        return any(id(t) in self.producer or id(t) in self.parameters for t in iter_tensors(values))

    def _parameter(self, tensor: torch.Tensor) -> Node | None:
        entry = self.parameters.get(id(tensor))
        if entry is None or entry[1] is not tensor:
            return None
        name, parameter = entry
        node = Node(name=self._name(name), kind=PARAM, op="param", target=name, obj=parameter)
        self._bind(node, parameter)
        return node

    def _length(self, tensor: torch.Tensor) -> int:
        producer = self.producer.get(id(tensor))
        return self.lengths.get(id(producer), 0) if producer is not None else 0

    def add_input(self, name: str, value: Any) -> None:
        self._bind(Node(name=name, kind=INPUT, op="input", target=name), value)

    def add_output(self, value: Any) -> None:
        node = Node(name="output", kind=OUTPUT, op="output", target="output", inputs=self._sources(value))
        node.shape, node.dtype = describe_value(value)
        self.nodes.append(node)

    # --- modules ----------------------------------------------------------------------------------------------
    def pre_hook(self, qualname: str, module: nn.Module) -> Callable[..., None]:
        leaf = is_leaf(module)

        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            call = _ModuleCall(qualname, module, recorded=self.leaf_depth == 0, leaf=leaf)
            if call.recorded and leaf:
                self.leaf_depth += 1
                call.inputs = self._sources(args, kwargs)
                call.site = user_frame(depth=2)
            self.calls.append(call)

        return hook

    def post_hook(self, qualname: str, module: nn.Module) -> Callable[..., Any]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            call = self.calls.pop()
            if not (call.recorded and call.leaf):
                return None
            site = self.sites.get(qualname) or call.site
            node = module_node(self._name(qualname), qualname, module, type(module).__name__, site)
            if not node.inplace:
                output = _fresh(output, (args, kwargs))  # still inside the leaf: the alias is not recorded
            self.leaf_depth -= 1
            node.inputs = call.inputs
            node.meta["call_site"] = call.site
            self._bind(node, output)
            return output

        return hook

    def owner(self) -> str:
        """The innermost recorded module running: the one whose forward makes a functional call."""
        return next((c.qualname for c in reversed(self.calls) if c.recorded), "")

    def failure_in_module(self, exc: BaseException) -> ForwardFailure:
        call = self.calls[-1] if self.calls else None
        if call is None:
            return ForwardFailure("forward", "forward", None, None, exc)
        return ForwardFailure(call.qualname or "root", f"nn.{type(call.module).__name__}", call.qualname, self.sites.get(call.qualname), exc)

    # --- functions and tensor methods -------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.leaf_depth:
            return func(*args, **kwargs)
        name = _function_name(func)
        try:
            result = func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - stepped over (a merge of mismatched shapes) or reported with its site
            site, owner = user_frame(depth=2), self.owner()
            stepped = step_over(name, args, kwargs, self._length, self.recovery) if is_recoverable(name) else None
            if stepped is None:
                raise ForwardFailure(name, call_label(func, name), owner, site, exc) from exc
            node = self._call(name, func, args, kwargs, site, owner)
            node.error = stepped.message
            result = _fresh(stepped.value, (args, kwargs))
            self._bind(node, result)
            return result
        if not self._reads_recorded(args, kwargs) or not any(True for _ in iter_tensors(result)):
            return result
        node = self._call(name, func, args, kwargs, user_frame(depth=2), self.owner())
        if not node.inplace:
            result = _fresh(result, (args, kwargs))
        self._bind(node, result)
        return result

    def _call(self, name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], site: Site | None, owner: str) -> Node:
        node = call_node(self._name(name.strip("_") or "call"), name, call_label(func, name), owner, args, kwargs, lambda v: isinstance(v, torch.Tensor))
        node.inputs = self._sources(args, kwargs)
        if site is not None:
            node.file, node.line = site
        return node


def _fresh(result: Any, inputs: Any) -> Any:
    """An op that hands back its input tensor itself (eval-mode dropout, nn.Identity, `x.contiguous()`) gets a
    fresh alias of it instead, so that later readers of the input are not taken for readers of this op."""
    if isinstance(result, torch.Tensor) and any(result is t for t in iter_tensors(inputs)):
        try:
            return result.view_as(result)
        except RuntimeError:
            return result
    return result


def _function_name(func: Any) -> str:
    name = getattr(func, "__name__", "call")
    if name == "__get__":  # a property such as Tensor.T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name
