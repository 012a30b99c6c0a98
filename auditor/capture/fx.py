"""Capture with `torch.fx.symbolic_trace`, then one real forward through an Interpreter for shapes.

The Interpreter survives a failing merge (a residual add of mismatched shapes, a skip concatenation of
different sizes): it records the failure on that node and carries on with a stand-in (`capture.forward`), so
one pass finds every bad merge; when the rest still cannot run, the graph up to there is audited.
"""

from __future__ import annotations

import dis
import functools
import inspect
import operator
from types import CodeType, FrameType
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from auditor.capture.common import Site, call_node, describe_value, function_label, is_leaf, module_node, owner
from auditor.capture.forward import Attempt, ForwardFailure, Recovery, is_recoverable, mark_partial, run_recovering, step_over
from auditor.capture.state import restored
from auditor.graph import INPUT, OUTPUT, PARAM, AuditGraph, Node
from auditor.locations import display_path, user_frame_object

# fx records `out += x` as `operator.add` (a Proxy has no `__iadd__`), but on tensors it runs in place (and fails
# where `out` is narrower than the broadcast sum): the tracer records the in-place operator the user wrote.
_AUGMENTED = {operator.add: operator.iadd, operator.sub: operator.isub, operator.mul: operator.imul, operator.truediv: operator.itruediv}


class _LocatingTracer(fx.Tracer):
    """symbolic_trace's tracer, plus the user's forward line for every node and the audit's leaf rule."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf(m)

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None, type_expr: Any = None) -> fx.Node:
        frame = user_frame_object(depth=2)
        if kind == "call_function" and target in _AUGMENTED and isinstance(args[0], fx.Node) and frame is not None \
                and _runs_augmented_assignment(frame):
            target = _AUGMENTED[target]  # not `0 += x`, a number's reflected add (it rebinds, never in place)
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["user_frame"] = (display_path(frame.f_code.co_filename), frame.f_lineno) if frame is not None else None
        return node


def trace(model: nn.Module, given: int | None = None) -> fx.GraphModule:
    """The traced module; what the symbolic forward wrote into the model (a Proxy) is undone first. The
    GraphModule is made before that: it copies the tensor constants tracing stored on the model
    (`_tensor_constant0`, a `torch.arange` made in forward), which the undo removes. With `given` (how many
    positional inputs the forward receives) the parameters with a default that those do not fill are traced at
    their default: `forward(x, vars=None, bn_training=True)` (MAML-style learners) branches on them, which a
    Proxy cannot; without it every parameter is a placeholder (what input inference reads)."""
    tracer = _LocatingTracer()
    with restored(model):
        graph = tracer.trace(model, concrete_args=_defaults(model, given))
        return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _defaults(model: nn.Module, given: int | None) -> dict[str, Any] | None:
    if given is None:
        return None
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    bound = {
        p.name: p.default for index, p in enumerate(parameters)
        if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and index >= given
    }
    return bound or None


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, recovery: Recovery) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # our ForwardFailure says where; fx would append the node's dump to it
        self.recovery = recovery
        self.described: dict[fx.Node, tuple[tuple[int, ...] | None, str | None]] = {}
        self.failures: dict[fx.Node, str] = {}
        self.lengths: dict[fx.Node, int] = {}  # ops on the longest path from the inputs to each node run

    def run_node(self, n: fx.Node) -> Any:
        self.lengths[n] = 1 + max((self.lengths.get(i, 0) for i in n.all_input_nodes), default=0)
        try:
            result = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - any failure is either stepped over or reported with its node
            result = self._step_over(n, exc)
        self.described[n] = describe_value(result)
        return result

    def _step_over(self, n: fx.Node, exc: Exception) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        stepped = None
        if is_recoverable(_op_name(n)):
            lengths = {id(self.env[i]): self.lengths.get(i, 0) for i in n.all_input_nodes if i in self.env}
            stepped = step_over(_op_name(n), args, kwargs, lambda t: lengths.get(id(t), 0), self.recovery)
        if stepped is None:
            label = f"nn.{type(self.fetch_attr(str(n.target))).__name__}" if n.op == "call_module" else _target_label(n)
            raise ForwardFailure(n.name, label, owner(n), n.meta.get("user_frame"), exc) from exc
        self.failures[n] = stepped.message
        return stepped.value


def capture_fx(model: nn.Module, inputs: tuple[Any, ...], sites: dict[str, Site]) -> AuditGraph:
    """Trace, run once for shapes, and convert to the audit graph. Raises on trace or forward failure."""
    return capture_traced(trace(model, len(inputs)), inputs, sites, model)


def capture_traced(gm: fx.GraphModule, inputs: tuple[Any, ...], sites: dict[str, Site], model: nn.Module | None = None) -> AuditGraph:
    """The audit graph of an already traced GraphModule (without tracing it again, which would lose the
    nodes' owning modules and user lines): `--fix` re-reads the graph it rewrites this way."""
    outcome = run_recovering(lambda recovery: _run(gm, inputs, recovery))
    stopped = outcome.stopped()
    recorder = outcome.state
    nodes: dict[fx.Node, Node] = {}
    for fx_node in gm.graph.nodes:
        if fx_node not in recorder.described:
            continue  # after the point where a partial pass stopped
        node = _convert(fx_node, gm, sites)
        node.inputs = [nodes[i] for i in fx_node.all_input_nodes if i in nodes]
        node.shape, node.dtype = recorder.described[fx_node]
        node.error = recorder.failures.get(fx_node)
        node.meta["fx_node"] = fx_node
        nodes[fx_node] = node
    graph = AuditGraph(list(nodes.values()), method="fx", model=model if model is not None else gm, meta={"graph_module": gm}, sites=sites)
    mark_partial(graph, stopped)
    graph.link()
    return graph


def _run(gm: fx.GraphModule, inputs: tuple[Any, ...], recovery: Recovery) -> Attempt[_ShapeRecorder]:
    recorder = _ShapeRecorder(gm, recovery)
    try:
        with torch.no_grad():
            recorder.run(*inputs)
    except ForwardFailure as failure:
        return Attempt(recorder, failure, len(recorder.described))
    return Attempt(recorder, None, len(recorder.described))


def _convert(n: fx.Node, gm: fx.GraphModule, sites: dict[str, Site]) -> Node:
    frame = n.meta.get("user_frame")
    if n.op == "placeholder":
        return Node(name=n.name, kind=INPUT, op="input", target=str(n.target))
    if n.op == "output":
        return Node(name=n.name, kind=OUTPUT, op="output", target="output")
    if n.op == "get_attr":
        node = Node(name=n.name, kind=PARAM, op="param", target=str(n.target), module=owner(n), obj=_attribute(gm, str(n.target)))
    elif n.op == "call_module":
        module = gm.get_submodule(str(n.target))
        qualname = str(n.target)
        node = module_node(n.name, qualname, module, type(module).__name__, sites.get(qualname) or frame)
        node.meta["call_site"] = frame
        return node
    else:
        node = call_node(n.name, _op_name(n), _target_label(n), owner(n), n.args, n.kwargs, lambda v: isinstance(v, fx.Node))
    if frame is not None:
        node.file, node.line = frame
    return node


def _attribute(gm: fx.GraphModule, target: str) -> Any:
    """The tensor a get_attr node reads (a parameter, a buffer, a constant), or None."""
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def _runs_augmented_assignment(frame: FrameType) -> bool:
    """Whether `frame` is executing an augmented assignment (`+=`, `-=`, `*=`, `/=`) right now."""
    return frame.f_lasti in _augmented_offsets(frame.f_code)


@functools.lru_cache(maxsize=256)
def _augmented_offsets(code: CodeType) -> frozenset[int]:
    return frozenset(
        i.offset for i in dis.get_instructions(code)
        if i.opname.startswith("INPLACE_") or (i.opname == "BINARY_OP" and i.argrepr.endswith("="))
    )


def _op_name(n: fx.Node) -> str:
    if n.op == "call_method":
        return str(n.target)
    if n.op == "call_function":
        return getattr(n.target, "__name__", str(n.target))
    return n.op


def _target_label(n: fx.Node) -> str:
    if n.op == "call_method":
        return f"Tensor.{n.target}"
    if n.op == "call_function":
        return function_label(n.target)
    return str(n.target)
