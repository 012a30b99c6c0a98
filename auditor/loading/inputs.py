"""Example inputs: `--input` specs, `example_inputs()`, `example_input_array`, or inferred from the first layer.

Inference proposes a few candidate shapes (the spatial size a conv net needs is not written anywhere); the
engine takes the first one the model runs on.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

from auditor.errors import TargetError, first_line
from auditor.specs import InputSpec

BATCH = 2
SEQUENCE = 16


def make_inputs(specs: list[InputSpec], model: nn.Module, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded tensors for the specs; integer inputs lie in [0, n) for the model's smallest embedding table."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(spec.shape, generator=generator).to(dtype))
        elif dtype == torch.bool:
            tensors.append(torch.ones(spec.shape, dtype=torch.bool))
        else:
            tensors.append(torch.randint(0, token_range(model), spec.shape, generator=generator).to(dtype))
    return tuple(tensors)


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


def infer_candidates(model: nn.Module) -> list[list[InputSpec]]:
    """Plausible input specs from the layers that first consume each forward argument, best guess first."""
    consumers = _first_consumers(model)
    if consumers is None:
        raise TargetError("cannot infer the model's inputs (forward takes several arguments or none); pass --input for each")
    per_input = []
    for name, module in consumers:
        options = _specs_for(module)
        if not options:
            layer = f"{type(module).__name__}" if module is not None else "a function"
            raise TargetError(f"cannot infer input {name!r} (first used by {layer}); pass --input SPEC, e.g. --input 2,3,224,224")
        per_input.append(options)
    longest = max(len(options) for options in per_input)
    return [[options[min(i, len(options) - 1)] for options in per_input] for i in range(longest)]


def _first_consumers(model: nn.Module) -> list[tuple[str, nn.Module | None]] | None:
    """For each required forward argument, the first atomic module it reaches (through reshapes)."""
    from auditor.capture.fx import trace  # local: inference is the only user outside the capture itself

    try:
        gm = trace(model)
    except Exception:  # noqa: BLE001 - untraceable: fall back to the first layer in registration order
        if len(_forward_inputs(model)) != 1:
            return None
        first = next((m for m in model.modules() if _specs_for(m)), None)
        return [("x", first)]
    if _specs_for(model):  # the model is itself one layer (nn.Linear, nn.LSTM...)
        return [("x", model)]
    required = _forward_inputs(model)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"][: len(required)]
    return [(name, _consumer_module(gm, node)) for name, node in zip(required, placeholders)] or None


def _consumer_module(gm: Any, start: Any) -> nn.Module | None:
    frontier = list(start.users)
    seen = set()
    while frontier:
        node = frontier.pop(0)
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if _specs_for(module):
                return module
        frontier.extend(node.users)
    return None


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


def _specs_for(module: nn.Module | None) -> list[InputSpec]:
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
