"""The model as the user built it, kept across capture attempts.

A forward may write to its module (`self.freqs_cis = self.freqs_cis.to(h.device)` in Llama 2, KV caches,
counters). Run symbolically (fx tracing, export, fake tensors), that write leaves a Proxy or a fake tensor in
the module, and every later attempt fails on it. A forward may also register hooks: Hugging Face's output
recording installs forward hooks on its first call and marks the model as hooked; putting the mark back without
the hooks doubled every recorded hidden state on the next call (SegFormer's decode head then met its first stage
twice). A snapshot of each module's attributes, its dictionaries and sets (parameters, buffers, children, hook
registries), and its class is cheap (references, no tensor copies) and puts all of that back.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Iterator

import torch.nn as nn

# Containers restored in place: hook handles and torch's own bookkeeping hold these very objects. Exact types
# only: a dict subclass (a ModelOutput) may refuse clear/update.
_CONTAINERS = (dict, OrderedDict, set)


class ModuleState:
    """Each module's attributes, the contents of its plain dictionaries and sets, and its class, restorable any
    number of times."""

    def __init__(self, model: nn.Module) -> None:
        self._saved: list[tuple[nn.Module, type, dict[str, Any], list[tuple[Any, Any]]]] = []
        for module in model.modules():
            attributes = dict(vars(module))
            containers = [(value, value.copy()) for value in attributes.values() if type(value) in _CONTAINERS]
            self._saved.append((module, type(module), attributes, containers))

    def restore(self) -> None:
        for module, cls, attributes, containers in self._saved:
            if type(module) is not cls:  # a lazy module that materialized
                module.__class__ = cls
            vars(module).clear()
            vars(module).update(attributes)
            for current, saved in containers:
                current.clear()
                current.update(saved)


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves the model's modules exactly as they were."""
    state = ModuleState(model)
    try:
        yield
    finally:
        state.restore()
