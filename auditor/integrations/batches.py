"""From a training batch to the forward's inputs, without guessing shapes: the batch is real data.

The rule (documented in the README):
- a mapping (`{"input_ids": ..., "labels": ...}`) is passed by keyword: each key that names a parameter of the
  forward fills it; other keys (ids, raw text) are left out; a forward of one parameter that no key names
  (`forward(self, batch)`) takes the mapping itself;
- a tensor is the one input;
- a tuple or list `(x, y)` gives its leading items to the forward's required positional parameters (at least
  one): `forward(x)` gets `x`, `forward(x, mask)` gets `x, mask`; the rest (targets) are left out.
A caller with another layout passes its own function from the batch to the inputs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from auditor.loading.guesses import positional_parameters
from auditor.loading.inputs import bound_by_name
from auditor.prepare import model_device


def forward_inputs(model: nn.Module, batch: Any, choose: Callable[[Any], Any] | None = None) -> tuple[Any, ...]:
    """The positional arguments of `model`'s forward taken from `batch`, on the model's device. `choose(batch)`:
    the caller's own split, returning the inputs as a tuple (all of them), a dict (by name) or one tensor."""
    if choose is not None:
        chosen = choose(batch)
        inputs = keyword_inputs(model, chosen) if isinstance(chosen, Mapping) else chosen if isinstance(chosen, tuple) else (chosen,)
    elif isinstance(batch, Mapping):
        inputs = keyword_inputs(model, batch)
    elif isinstance(batch, torch.Tensor):
        inputs = (batch,)
    elif isinstance(batch, (tuple, list)):
        inputs = leading_inputs(model, batch)
    else:
        raise ValueError(f"a {type(batch).__name__} batch cannot be split into forward inputs; pass inputs=(a function from the batch to them)")
    return to_device(inputs, model_device(model))


def keyword_inputs(model: nn.Module, batch: Mapping[str, Any]) -> tuple[Any, ...]:
    """The batch's entries bound by name to the forward's parameters, as positional arguments (the API's own
    binding of a dict of inputs, `loading.inputs.bound_by_name`)."""
    return bound_by_name(model, batch, "the batch", "pass inputs=(a function from the batch to the inputs)")


def leading_inputs(model: nn.Module, batch: tuple[Any, ...] | list[Any]) -> tuple[Any, ...]:
    """The batch's leading items, one per required positional parameter of the forward (at least one)."""
    required = [p for p in positional_parameters(model) if p.default is p.empty]
    count = max(1, len(required))
    if len(batch) < count:
        raise ValueError(f"the batch has {len(batch)} item{'s' if len(batch) != 1 else ''}, the forward requires {count}; pass inputs=(a function from the batch to the inputs)")
    return tuple(batch[:count])


def to_device(value: Any, device: torch.device) -> Any:
    """Tensors (also inside tuples, lists and dicts) moved to `device`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
