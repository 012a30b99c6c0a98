"""Capture with `torch.export` (non-strict), or read a saved `.pt2` program.

Export traces inside torch.nn composites (nn.TransformerEncoderLayer) and through shape checks that defeat fx.
Its graph holds aten ops; the ops of one call of an atomic module (a Conv2d's conv2d, an LSTM's lstm and
getitems) are folded into one MODULE node, so rules see the same graph as with fx. Shapes come from the
FakeTensor in each node's `meta["val"]`; rules run before any decomposition (which would erase eval dropout).

A failing merge (a residual add of mismatched shapes) stops torch.export with a bare broadcast message. After
such a message the model is exported again under a mode that steps over such merges as the other captures do
(`capture.forward`): the failed op stays in the traced graph without users, followed by its stand-in's ops and
an `aten.alias` that ends them; the conversion folds them back into one node carrying the error.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
from typing import Any, Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from auditor.capture.common import Site, call_node, describe_value, is_leaf, iter_tensors, module_node, op_of_module, owner
from auditor.capture.forward import Attempt, Recovery, is_recoverable, run_recovering, step_over
from auditor.graph import INPUT, OUTPUT, PARAM, AuditGraph, Node, ops
from auditor.locations import display_path, first_user_site

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')
# What torch says when operands do not fit together ("Attempting to broadcast a dimension...", "The size of
# tensor a (64) must match...", "Sizes of tensors must match except in dimension 1"): worth a second trace.
_SHAPE_MISMATCH = re.compile(r"broadcast|must match", re.IGNORECASE)
_CONTAINERS = ("torch.nn.modules.container.",)
# What torch.export says when the output holds an object its pytree does not know.
_UNKNOWN_OUTPUT = "in output, which is not a known type"


def capture_export(model: nn.Module, inputs: tuple[Any, ...], sites: dict[str, Site]) -> AuditGraph:
    try:
        program = _export(model, inputs)
    except Exception as failure:  # noqa: BLE001 - perhaps a failing merge: export again, stepping over it
        if not _SHAPE_MISMATCH.search(str(failure)):
            raise  # another limitation of export: a second trace would only double its cost
        return _capture_stepping_over(model, inputs, sites, failure)
    return convert_program(program, model, sites)


def _export(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    try:
        return _export_as_is(model, inputs)
    except RuntimeError as failure:
        if _UNKNOWN_OUTPUT not in str(failure):
            raise
    with _tensor_outputs(model):
        return _export_as_is(model, inputs)


def _export_as_is(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), _fresh_dropout_inputs():
        return torch.export.export(model, inputs, strict=False)  # a failed attempt prints its partial graph


@contextlib.contextmanager
def _fresh_dropout_inputs() -> Iterator[None]:
    """Dropout modules read a fresh alias of their input while export traces. In eval mode a dropout hands back
    its input tensor itself, and export follows tensor identity: in `drop(y) + y.tanh()` the tanh would be
    recorded as reading the dropout's output (torch 2.14), a dropout before an activation that is not there."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
        if op_of_module(module) == ops.DROPOUT:
            return tuple(a.view_as(a) if isinstance(a, torch.Tensor) else a for a in args)
        return None

    with nn.modules.module.register_module_forward_pre_hook(hook):  # the handle removes the hook on leaving
        yield


@contextlib.contextmanager
def _tensor_outputs(model: nn.Module) -> Iterator[None]:
    """The model's forward returning only the tensors of its output while export traces it: rules read nothing
    else, and an object beside them that torch's pytree does not know (a Hugging Face EncoderDecoderCache) stops
    export. The user's own instance attribute `forward` (accelerate's hooks set one) is put back afterwards."""
    own = vars(model).get("forward")
    original = model.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return tuple(iter_tensors(original(*args, **kwargs)))

    model.forward = forward
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def _capture_stepping_over(model: nn.Module, inputs: tuple[Any, ...], sites: dict[str, Site], failure: Exception) -> AuditGraph:
    """Export again, stepping over failing merges. An exported program is all or nothing: when the rest still
    fails, this raises (the first failure when no merge was stepped over) and the hooks capture, which can stop
    part way, takes over."""
    outcome = run_recovering(lambda recovery: _export_stepping_over(model, inputs, recovery))
    if outcome.failure is not None:
        raise outcome.failure if outcome.stepped_over else failure
    program, messages = outcome.state
    return convert_program(program, model, sites, messages)


def _export_stepping_over(model: nn.Module, inputs: tuple[Any, ...], recovery: Recovery) -> Attempt[tuple[Any, list[str]]]:
    mode = _SteppingOver(recovery)
    try:
        with mode:
            program = _export(model, inputs)
    except Exception as exc:  # noqa: BLE001 - this choice of stand-ins did not get through
        return Attempt((None, mode.messages), exc, len(mode.lengths))
    return Attempt((program, mode.messages), None, len(mode.lengths))


class _SteppingOver(TorchFunctionMode):
    """Active while torch.export traces: a failing merge returns a stand-in (traced like any op) ended by an
    `aten.alias`, and its message is kept in order. Path lengths follow tensor identity."""

    def __init__(self, recovery: Recovery) -> None:
        super().__init__()
        self.recovery = recovery
        self.messages: list[str] = []
        self.lengths: dict[int, int] = {}
        self.alive: list[Any] = []  # keeps ids unique for the whole trace

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        try:
            result = func(*args, **kwargs)
        except Exception:
            name = getattr(func, "__name__", "")
            stepped = step_over(name, args, kwargs, self._length, self.recovery) if is_recoverable(name) else None
            if stepped is None:
                raise
            self.messages.append(stepped.message)
            result = torch.ops.aten.alias.default(stepped.value)
        length = 1 + max((self._length(t) for t in iter_tensors((args, kwargs))), default=0)
        for tensor in iter_tensors(result):
            self.lengths[id(tensor)] = length
            self.alive.append(tensor)
        return result

    def _length(self, tensor: Any) -> int:
        return self.lengths.get(id(tensor), 0)


def load_program(path: str, *, trust_pickle: bool = False) -> AuditGraph:
    """A saved ExportedProgram; no live module, so weights come from its state_dict. Its pickled parts are
    refused without `trust_pickle` (`auditor.loading.pickles`)."""
    from auditor.loading.pickles import unpickling_refused

    with contextlib.nullcontext() if trust_pickle else unpickling_refused(display_path(path)):
        program = torch.export.load(path)
    return convert_program(program, None, {})


def convert_program(program: Any, model: nn.Module | None, sites: dict[str, Site], stepped_over: Sequence[str] = ()) -> AuditGraph:
    signature = program.graph_signature
    weights = {**signature.inputs_to_parameters, **signature.inputs_to_buffers, **signature.inputs_to_lifted_tensor_constants}
    state = {**program.state_dict, **getattr(program, "constants", {})}
    groups = _group_by_atomic_module(program.graph, model)
    merges = _stepped_over_merges(program.graph, stepped_over)
    nodes: dict[fx.Node, Node] = {}
    ordered: list[Node] = []
    taken = {n.name for n in program.graph.nodes}
    for fx_node in program.graph.nodes:
        if fx_node in nodes:
            continue
        group = groups.get(fx_node)
        if fx_node in merges:
            members, message = merges[fx_node]
            node = _plain_node(fx_node, weights, state, model)
            node.error = message
            node.shape, node.dtype = describe_value(members[-1].meta.get("val"))  # the stand-in's
        elif group is not None:
            node = _module_node(_unique_name(group["qualname"], taken), group, model, state, sites)
            members = group["members"]
        else:
            node = _plain_node(fx_node, weights, state, model)
            members = [fx_node]
        for member in members:
            nodes[member] = node
        sources = [i for m in members for i in m.all_input_nodes if i not in members]
        # an atomic module's own weights are its params; a call reads its weights as PARAM inputs (`x @ self.w`)
        node.inputs = _unique(nodes[i] for i in sources if i in nodes and not (group is not None and _is_weight(i, weights)))
        ordered.append(node)
    graph = AuditGraph(ordered, method="export", model=model, meta={"program": program}, sites=sites)
    graph.link()
    return graph


def _stepped_over_merges(graph: fx.Graph, messages: Sequence[str]) -> dict[fx.Node, tuple[list[fx.Node], str]]:
    """The nodes of each stepped-over merge, keyed by the failed op (no value, no users), with its message: the
    failed op, its stand-in's ops and the `aten.alias` that ends them, in graph order."""
    found: dict[fx.Node, tuple[list[fx.Node], str]] = {}
    pending = list(messages)
    order = list(graph.nodes)
    index = 0
    while pending and index < len(order):
        n = order[index]
        if n.op == "call_function" and not n.users and n.meta.get("val") is None and is_recoverable(_aten_name(n)):
            end = next((j for j in range(index + 1, len(order)) if order[j].target is torch.ops.aten.alias.default), None)
            if end is None:
                break
            found[n] = (order[index:end + 1], pending.pop(0))
            index = end
        index += 1
    return found


def _group_by_atomic_module(graph: fx.Graph, model: nn.Module | None) -> dict[fx.Node, dict[str, Any]]:
    """Consecutive call_function nodes made inside the same call of an atomic module, as one group each."""
    groups: dict[fx.Node, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for n in graph.nodes:
        key = _atomic_entry(n, model) if n.op == "call_function" else None
        if key is None:
            current = None
            continue
        if current is None or current["key"] != key:
            current = {"key": key, "qualname": key[1], "class": key[2], "members": []}
        current["members"].append(n)
        groups[n] = current
    return groups


def _atomic_entry(n: fx.Node, model: nn.Module | None) -> tuple[str, str, str] | None:
    """(stack key, qualified name, class path) of the outermost atomic module on the node's module stack."""
    for key, (qualname, class_path) in (n.meta.get("nn_module_stack") or {}).items():
        qualname = _plain_qualname(str(qualname))
        class_path = class_path if isinstance(class_path, str) else f"{class_path.__module__}.{class_path.__qualname__}"
        if _is_atomic(qualname, class_path, model):
            return str(key), qualname, class_path
    return None


def _is_atomic(qualname: str, class_path: str, model: nn.Module | None) -> bool:
    if model is not None:
        try:
            return is_leaf(model.get_submodule(qualname))
        except AttributeError:
            pass
    return class_path.startswith("torch.nn.modules.") and not class_path.startswith(_CONTAINERS)


def _plain_qualname(text: str) -> str:
    """Export and dynamo spell qualified names as `L__self__.a.b` or `L['self'].a.b`; rules want `a.b`."""
    text = re.sub(r"^L\['self'\]\.?|^L__self__\.?", "", text)
    return text


def _module_node(name: str, group: dict[str, Any], model: nn.Module | None, state: dict[str, Any], sites: dict[str, Site]) -> Node:
    members: list[fx.Node] = group["members"]
    qualname: str = group["qualname"]
    module = _submodule(model, qualname)
    class_name = group["class"].rsplit(".", 1)[-1]
    call_site = _user_frame(members[0])
    node = module_node(name, qualname, module, class_name, sites.get(qualname) or call_site)
    node.meta["call_site"] = call_site
    if module is None:
        prefix = qualname + "." if qualname else ""
        node.params = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and isinstance(v, torch.Tensor) and "." not in k[len(prefix):]}
        main = next((m for m in members if ops.op_for_name(_aten_name(m))[0] == node.op), None)
        if main is not None:
            node.attrs = call_node("", _aten_name(main), "", None, main.args, main.kwargs, lambda v: isinstance(v, fx.Node)).attrs
    outputs = [m for m in members if any(u not in members for u in m.users)] or members[-1:]
    node.shape, node.dtype = describe_value(outputs[0].meta.get("val"))
    node.meta["fx_nodes"] = members
    return node


def _plain_node(n: fx.Node, weights: dict[str, str], state: dict[str, Any], model: nn.Module | None) -> Node:
    if n.op == "placeholder":
        if n.name in weights:
            name = weights[n.name]
            node = Node(name=n.name, kind=PARAM, op="param", target=name, obj=_live_tensor(model, name, state))
        else:
            node = Node(name=n.name, kind=INPUT, op="input", target=n.name)
    elif n.op == "output":
        node = Node(name=n.name, kind=OUTPUT, op="output", target="output")
    elif n.op == "get_attr":
        node = Node(name=n.name, kind=PARAM, op="param", target=str(n.target))
    else:
        name = _aten_name(n)
        node = call_node(n.name, name, name.rsplit(".", 1)[0] if name.startswith("aten.") else name, _plain_qualname(owner(n)), n.args, n.kwargs, lambda v: isinstance(v, fx.Node))
        site = _user_frame(n)
        if site is not None:
            node.file, node.line = site
    node.shape, node.dtype = describe_value(n.meta.get("val"))
    node.meta["fx_node"] = n
    return node


def _unique_name(qualname: str, taken: set[str]) -> str:
    """Module nodes are named after their module, as fx names them (`layer1.0.conv` -> `layer1_0_conv`)."""
    base = qualname.replace(".", "_") or "root"
    name, index = base, 0
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    taken.add(name)
    return name


def _aten_name(n: fx.Node) -> str:
    target = n.target
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target._schema.name.split('::')[-1]}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def _user_frame(n: fx.Node) -> Site | None:
    """The innermost frame of the node's recorded stack trace that lies outside torch."""
    frames = [(m.group("file"), int(m.group("line"))) for m in _FRAME.finditer(n.meta.get("stack_trace") or "")]
    return first_user_site(reversed(frames))


def _submodule(model: nn.Module | None, qualname: str) -> nn.Module | None:
    if model is None:
        return None
    try:
        return model.get_submodule(qualname)
    except AttributeError:
        return None


def _live_tensor(model: nn.Module | None, name: str, state: dict[str, Any]) -> Any:
    """The model's own parameter or buffer `name` (the program's copy for a saved program)."""
    if model is not None:
        parent, _, attr = name.rpartition(".")
        value = getattr(_submodule(model, parent), attr, None)
        if isinstance(value, torch.Tensor):
            return value
    return state.get(name)


def _is_weight(n: fx.Node, weights: dict[str, str]) -> bool:
    return n.op == "placeholder" and n.name in weights


def _unique(items: Any) -> list[Node]:
    seen: list[Node] = []
    for item in items:
        if all(item is not s for s in seen):
            seen.append(item)
    return seen
