"""Example inputs: `--input` specs, `example_inputs()`, `example_input_array`, or inferred per forward argument.

Inference proposes a few candidate shapes per argument from the layer that first consumes it (the spatial size
a conv net needs is not written anywhere): an argument concatenated with others gets its share of the channels,
a recurrent state gets the RNN's `(h0, c0)`, an argument named like `lengths` gets valid sequence lengths. The
engine ranks the candidates on fake tensors and runs the model for real on the first that fits.
"""

from __future__ import annotations

import inspect
import re
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

from auditor.errors import TargetError, first_line
from auditor.specs import InputSpec, Spec, TupleSpec

BATCH = 2
SEQUENCE = 16
_LENGTHS = re.compile(r"^(?:\w+_)?(?:lengths?|lens|seq_lens?|seq_lengths?|num_tokens)$")
_STATES = ("hidden", "hx", "h0", "h_0", "hc", "h_c", "state", "states", "hidden_state", "init_state", "initial_state")
_CATS = ("cat", "concat", "concatenate")


def make_inputs(specs: list[Spec], model: nn.Module, seed: int = 0) -> tuple[Any, ...]:
    """Seeded tensors (tuples for tuple specs); integer inputs lie in [0, n) for the model's smallest embedding
    table, and an argument named like `lengths` holds valid lengths of the sequences it goes with."""
    generator = torch.Generator().manual_seed(seed)
    try:
        values = [_make(spec, model, generator) for spec in specs]
    except RuntimeError as exc:  # DefaultCPUAllocator: can't allocate memory
        raise TargetError(f"input {' '.join(map(str, specs))} is too large to allocate here: {first_line(exc)}") from exc
    for index in lengths_positions(model, len(values)):
        values[index] = _lengths_for(values, index)
    return tuple(values)


def _make(spec: Spec, model: nn.Module, generator: torch.Generator) -> Any:
    if isinstance(spec, TupleSpec):
        return tuple(_make(item, model, generator) for item in spec.items)
    dtype = getattr(torch, spec.dtype)
    if dtype.is_floating_point:
        return torch.randn(spec.shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.ones(spec.shape, dtype=torch.bool)
    return torch.randint(0, token_range(model), spec.shape, generator=generator).to(dtype)


def lengths_positions(model: nn.Module, count: int) -> list[int]:
    """Forward arguments (after the first) named like sequence lengths: `lengths`, `lens`, `src_lengths`..."""
    names = _positional_names(model)[:count]
    return [i for i, name in enumerate(names) if i > 0 and _LENGTHS.match(name)]


def _lengths_for(values: list[Any], index: int) -> Any:
    """Lengths for a batch of padded sequences: longest first (pack_padded_sequence's default order), none
    longer than the padded length of the other input, none zero."""
    current = values[index]
    if not isinstance(current, torch.Tensor) or current.dim() != 1 or current.dtype.is_floating_point:
        return current
    batch = current.shape[0]
    padded = next((v for i, v in enumerate(values) if i != index and isinstance(v, torch.Tensor) and v.dim() >= 2), None)
    if padded is None:
        return current
    length = padded.shape[1] if padded.shape[0] == batch else padded.shape[0]
    return torch.arange(length, length - batch, -1).clamp(min=1).to(current.dtype)


def token_range(model: nn.Module) -> int:
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    return min(sizes) if sizes else 2


def provided_inputs(model: nn.Module, namespace: ModuleType | None) -> tuple[tuple[Any, ...], str] | None:
    """Inputs the user's code provides: `example_inputs()` in the model's file, then `example_input_array`."""
    factory = getattr(namespace, "example_inputs", None) if namespace is not None else None
    if callable(factory):
        try:
            value = factory()
        except Exception as exc:  # noqa: BLE001 - the user's helper failed
            raise TargetError(f"example_inputs() in {namespace.__name__} failed: {type(exc).__name__}: {first_line(exc)}") from exc
        return _as_tuple(value), "example_inputs()"
    array = getattr(model, "example_input_array", None)
    if array is not None:
        return _as_tuple(array), "example_input_array"
    return None


def infer_candidates(model: nn.Module) -> list[list[Spec]]:
    """Plausible specs for each forward argument, best guess first (the i-th candidate takes each argument's
    i-th option, or its last)."""
    names = _forward_inputs(model)
    if not names:
        raise TargetError("cannot infer the model's inputs (its forward takes no argument); pass --input for each")
    traced = _trace(model)
    per_input = []
    for index, name in enumerate(names):
        options = _options(model, traced, index, name)
        if not options:
            raise TargetError(f"cannot infer input {name!r}{_consumer_text(model, traced, name)}; pass --input SPEC for each argument, "
                              f"e.g. --input 2,3,224,224")
        per_input.append(options)
    longest = max(len(options) for options in per_input)
    return [[options[min(i, len(options) - 1)] for options in per_input] for i in range(longest)]


def _options(model: nn.Module, traced: Any, index: int, name: str) -> list[Spec]:
    if index > 0 and _LENGTHS.match(name):
        return [InputSpec("int64", (BATCH,))]  # values filled by make_inputs
    if index == 0 and _specs_for(model):  # the model is itself one layer (nn.Linear, nn.LSTM...)
        return _specs_for(model)
    use = _first_use(traced, name) if traced is not None else _guessed_use(model, index, name)
    if use is None:
        return []
    module, role, split = use
    if role == "state":
        return [_state_spec(module)]
    options = _specs_for(module, time_major=_feeds_time_major_rnn(model, traced, module))
    return [_split(spec, *split) for spec in options] if split else options


def _trace(model: nn.Module) -> Any:
    from auditor.capture.fx import trace  # local: inference is the only user outside the capture itself

    try:
        return trace(model)
    except Exception:  # noqa: BLE001 - untraceable: inference falls back to names and registration order
        return None


def _first_use(gm: Any, name: str) -> tuple[nn.Module, str, tuple[int, int] | None] | None:
    """The first layer the argument reaches (through reshapes and functions), how (`input` or an RNN's
    `state`), and (dim, parts) when it is concatenated with other arguments on the way."""
    start = next((n for n in gm.graph.nodes if n.op == "placeholder" and str(n.target).lstrip("*") == name), None)
    if start is None:
        return None
    frontier: list[tuple[Any, Any, tuple[int, int] | None]] = [(user, start, None) for user in start.users]
    seen = set()
    while frontier:
        node, came_from, split = frontier.pop(0)
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if isinstance(module, nn.RNNBase) and node.args and node.args[0] is not came_from:
                return module, "state", None
            if _specs_for(module):
                return module, "input", split
        if node.op == "call_function" and getattr(node.target, "__name__", "") in _CATS:
            split = _cat_split(node) or split
        frontier.extend((user, node, split) for user in node.users)
    return None


def _cat_split(node: Any) -> tuple[int, int] | None:
    """`torch.cat([a, b], dim=1)` of forward arguments only: each has 1/k of the consumer's size along dim."""
    operands = node.args[0] if node.args else node.kwargs.get("tensors", ())
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(operands, (list, tuple)) or not isinstance(dim, int) or len(operands) < 2:
        return None
    if all(getattr(o, "op", None) == "placeholder" for o in operands):
        return dim, len(operands)
    return None


def _split(spec: Spec, dim: int, parts: int) -> Spec:
    if not isinstance(spec, InputSpec) or not -len(spec.shape) <= dim < len(spec.shape) or spec.shape[dim] % parts:
        return spec
    shape = list(spec.shape)
    shape[dim] //= parts
    return InputSpec(spec.dtype, tuple(shape))


def _guessed_use(model: nn.Module, index: int, name: str) -> tuple[nn.Module, str, None] | None:
    """Without a trace: the first argument feeds the first layer in registration order; an argument named like
    a recurrent state (`hidden`, `hx`) is the first RNN's state."""
    if index == 0:
        first = next((m for m in model.modules() if m is not model and _specs_for(m)), None)
        return (first, "input", None) if first is not None else None
    rnn = next((m for m in model.modules() if isinstance(m, nn.RNNBase)), None)
    if rnn is not None and name in _STATES:
        return rnn, "state", None
    return None


def _state_spec(rnn: nn.RNNBase) -> Spec:
    """`h0` of shape (layers * directions, batch, hidden), and for an LSTM the pair `(h0, c0)`."""
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    hidden = InputSpec("float32", (layers, BATCH, getattr(rnn, "proj_size", 0) or rnn.hidden_size))
    if isinstance(rnn, nn.LSTM):
        return TupleSpec((hidden, InputSpec("float32", (layers, BATCH, rnn.hidden_size))))
    return hidden


def _feeds_time_major_rnn(model: nn.Module, gm: Any, module: nn.Module) -> bool:
    """Whether an embedding's output goes into an RNN that is not batch_first: then tokens are (sequence, batch)."""
    if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return False
    rnn = _rnn_after(gm, module) if gm is not None else next((m for m in model.modules() if isinstance(m, nn.RNNBase)), None)
    return rnn is not None and not rnn.batch_first


def _rnn_after(gm: Any, module: nn.Module) -> nn.RNNBase | None:
    starts = [n for n in gm.graph.nodes if n.op == "call_module" and gm.get_submodule(str(n.target)) is module]
    frontier, seen = [u for n in starts for u in n.users], set()
    while frontier:
        node = frontier.pop(0)
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.RNNBase):
            return gm.get_submodule(str(node.target))
        frontier.extend(node.users)
    return None


def _consumer_text(model: nn.Module, gm: Any, name: str) -> str:
    if gm is None:
        return " (the model cannot be traced to see what uses it)"
    use = _first_use(gm, name)
    return f" (first used by {type(use[0]).__name__})" if use is not None else " (no layer consumes it directly)"


def _positional_names(model: nn.Module) -> list[str]:
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _forward_inputs(model: nn.Module) -> list[str]:
    """The forward arguments to feed: the required positional ones, or, when every argument is optional (Hugging
    Face's `forward(input_ids=None, attention_mask=None, ...)`), the first."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional if p.default is p.empty]
    return required or [p.name for p in positional[:1]]


def _specs_for(module: nn.Module | None, time_major: bool = False) -> list[InputSpec]:
    """Candidate specs for a tensor fed straight into `module`."""
    f32 = "float32"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # a decoder or generator: it starts small and grows
        rank = len(module.kernel_size)
        return [InputSpec(f32, (BATCH, module.in_channels, *([n] * rank))) for n in (1, 4, 8, 16)]
    if isinstance(module, nn.Conv1d):
        return [InputSpec(f32, (BATCH, module.in_channels, n)) for n in (128, 64, 256, 32)]
    if isinstance(module, nn.Conv2d):
        sizes = (28, 32, 64, 224) if module.in_channels == 1 else (224, 32, 64, 256, 28)
        return [InputSpec(f32, (BATCH, module.in_channels, n, n)) for n in sizes]
    if isinstance(module, nn.Conv3d):
        return [InputSpec(f32, (BATCH, module.in_channels, d, n, n)) for d, n in ((16, 32), (16, 64), (16, 112))]
    if isinstance(module, nn.Linear):
        return [InputSpec(f32, (BATCH, module.in_features)), InputSpec(f32, (BATCH, SEQUENCE, module.in_features))]
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        if time_major:
            return [InputSpec("int64", (SEQUENCE, BATCH)), InputSpec("int64", (128, BATCH))]
        return [InputSpec("int64", (BATCH, SEQUENCE)), InputSpec("int64", (BATCH, 128))]
    if isinstance(module, nn.RNNBase):
        shape = (BATCH, SEQUENCE, module.input_size) if module.batch_first else (SEQUENCE, BATCH, module.input_size)
        return [InputSpec(f32, shape)]
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        width = module.self_attn.embed_dim
        first = module.self_attn.batch_first
        return [InputSpec(f32, (BATCH, SEQUENCE, width) if first else (SEQUENCE, BATCH, width))]
    if isinstance(module, nn.TransformerEncoder):
        return _specs_for(module.layers[0])
    if isinstance(module, nn.LayerNorm):
        return [InputSpec(f32, (BATCH, SEQUENCE, *module.normalized_shape)), InputSpec(f32, (BATCH, *module.normalized_shape))]
    if isinstance(module, nn.BatchNorm1d):
        return [InputSpec(f32, (BATCH, module.num_features)), InputSpec(f32, (BATCH, module.num_features, SEQUENCE))]
    if isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)):
        return [InputSpec(f32, (BATCH, module.num_features, n, n)) for n in (32, 64, 224)]
    if isinstance(module, nn.GroupNorm):
        return [InputSpec(f32, (BATCH, module.num_channels, n, n)) for n in (32, 64, 224)]
    return []


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
