"""Example inputs: values for specs, the user's own (`example_inputs()`, `example_input_array`), inputs bound
by name (a dict), and the record of what a model was fed.

Values follow the argument they feed: integers lie below the model's smallest embedding table, an argument
named like `lengths` holds valid lengths of the sequences it goes with, a mask keeps every position (a
padding mask pads none). Guessing specs when none are given is `loading/guesses.py`.
"""

from __future__ import annotations

import inspect
import re
from types import ModuleType
from typing import Any, Mapping

import torch
import torch.nn as nn

from auditor.errors import TargetError, first_line
from auditor.findings import InputRecord
from auditor.loading.guesses import LENGTHS, positional_parameters
from auditor.specs import SCALAR_TYPES, InputSpec, ScalarSpec, Spec, TupleSpec

_MASK = re.compile(r"mask")
_PADDING_MASK = re.compile(r"padding_mask|pad_mask")


def make_inputs(specs: list[Spec | None], model: nn.Module, seed: int = 0) -> tuple[Any, ...]:
    """Seeded values for the forward's positional arguments, one per spec (None stays None)."""
    generator = torch.Generator().manual_seed(seed)
    names = positional_names(model)
    names += [""] * (len(specs) - len(names))
    try:
        values = [None if spec is None else _make(spec, model, generator, name) for spec, name in zip(specs, names)]
    except RuntimeError as exc:  # DefaultCPUAllocator: can't allocate memory
        shown = " ".join(str(s) for s in specs)
        raise TargetError(f"input {shown} is too large to allocate here: {first_line(exc)}") from exc
    for index in lengths_positions(model, len(values)):
        values[index] = _lengths_for(values, index)
    return tuple(values)


def _make(spec: Spec, model: nn.Module, generator: torch.Generator, name: str) -> Any:
    if isinstance(spec, TupleSpec):
        return tuple(_make(item, model, generator, name) for item in spec.items)
    if isinstance(spec, ScalarSpec):
        return spec.value
    dtype = getattr(torch, spec.dtype)
    if _MASK.search(name):  # every position kept: ones, or for a padding mask (True = padded) no padding
        return torch.zeros(spec.shape, dtype=dtype) if _PADDING_MASK.search(name) else torch.ones(spec.shape, dtype=dtype)
    if dtype.is_floating_point:
        return torch.randn(spec.shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.ones(spec.shape, dtype=torch.bool)
    return torch.randint(0, token_range(model), spec.shape, generator=generator).to(dtype)


def lengths_positions(model: nn.Module, count: int) -> list[int]:
    """Forward arguments (after the first) named like sequence lengths: `lengths`, `lens`, `src_lengths`..."""
    names = positional_names(model)[:count]
    return [i for i, name in enumerate(names) if i > 0 and LENGTHS.match(name)]


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
        return as_arguments(model, value), "example_inputs()"
    array = getattr(model, "example_input_array", None)
    if array is not None:
        return as_arguments(model, array), "example_input_array"
    return None


def as_arguments(model: nn.Module, value: Any) -> tuple[Any, ...]:
    """The forward's positional arguments from what a user hands over: a tuple or list (one item each), a
    mapping (bound by name, `bound_by_name`), or one value."""
    if isinstance(value, Mapping):
        return bound_by_name(model, value)
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def bound_by_name(model: nn.Module, mapping: Mapping[str, Any], what: str = "the inputs", remedy: str = "pass them as a tuple") -> tuple[Any, ...]:
    """A mapping's entries bound by name to the forward's parameters, as positional arguments: the parameters
    between them keep their defaults (the captures take positional inputs); keys that name no parameter (ids,
    raw text) are left out. A forward of one parameter that no key names (`forward(self, batch)`) takes the
    mapping itself. A key naming a keyword-only parameter, no key naming any, or a required parameter no key
    names is a ValueError saying so (`what`: how it names the mapping; `remedy`: what to do instead)."""
    parameters = inspect.signature(model.forward).parameters
    keyword_only = [k for k in mapping if k in parameters and parameters[k].kind is inspect.Parameter.KEYWORD_ONLY]
    if keyword_only:
        raise ValueError(f"the forward takes `{keyword_only[0]}` only by keyword; {remedy}")
    positional = positional_parameters(model)
    used = [i for i, p in enumerate(positional) if p.name in mapping]
    if not used:
        if len(positional) == 1:
            return (mapping,)
        raise ValueError(f"no key of {what} ({', '.join(map(str, mapping))}) names a parameter of the forward "
                         f"({', '.join(p.name for p in positional)}); {remedy}")
    inputs = []
    for parameter in positional[: used[-1] + 1]:
        if parameter.name in mapping:
            inputs.append(mapping[parameter.name])
        elif parameter.default is inspect.Parameter.empty:
            raise ValueError(f"{what} has no `{parameter.name}` for the forward's required argument; {remedy}")
        else:
            inputs.append(parameter.default)
    return tuple(inputs)


def positional_names(model: nn.Module) -> list[str]:
    return [p.name for p in positional_parameters(model)]


def records(model: nn.Module, values: tuple[Any, ...], source: str) -> list[InputRecord]:
    """What the forward was fed, argument by argument, for the result (given inputs: not guessed)."""
    names = positional_names(model)
    names += [f"input {i}" for i in range(len(names), len(values))]
    return [InputRecord(name, spec_of(value), source) for name, value in zip(names, values)]


def spec_of(value: Any) -> str:
    """A value in --input's grammar where it has one (`int64:2,32`, `(1,2,32),(1,2,32)`, `=0.5`), else its type."""
    spec = _spec(value)
    return str(spec) if spec is not None else "None" if value is None else type(value).__name__


def _spec(value: Any) -> Spec | None:
    if isinstance(value, SCALAR_TYPES) and value is not None:
        return ScalarSpec(value)
    if isinstance(value, torch.Tensor):
        return InputSpec(str(value.dtype).removeprefix("torch."), tuple(value.shape)) if value.dim() else None
    if isinstance(value, (tuple, list)) and value:
        items = [_spec(v) for v in value]
        return TupleSpec(tuple(items)) if all(i is not None for i in items) else None  # type: ignore[arg-type]
    return None
