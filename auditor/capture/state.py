"""The model as the user built it, kept across capture attempts.

A forward may write to its module (`self.freqs_cis = self.freqs_cis.to(h.device)` in Llama 2, KV caches,
counters). Run symbolically (fx tracing, export, fake tensors), that write leaves a Proxy or a fake tensor in
the module, and every later attempt fails on it. A snapshot of each module's attributes, parameters, buffers,
children and class is cheap (references, no tensor copies) and puts all of that back.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch.nn as nn


class ModuleState:
    """Each module's own dictionaries (shallow copies) and class, restorable any number of times."""

    def __init__(self, model: nn.Module) -> None:
        self._saved: list[tuple[nn.Module, type, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]] = [
            (m, type(m), dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()
        ]

    def restore(self) -> None:
        for module, cls, attributes, parameters, buffers, children in self._saved:
            if type(module) is not cls:  # a lazy module that materialized
                module.__class__ = cls
            vars(module).clear()
            vars(module).update(attributes)
            for current, saved in ((module._parameters, parameters), (module._buffers, buffers), (module._modules, children)):
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
