"""The model being fixed, without a second copy of its weights.

`Workspace.of(model)` copies the module objects (the tree, its hyper-parameters, everything a forward reads) but
shares every parameter and buffer with the user's model. A fix that writes a tensor gets its own copy of that one
tensor first (copy-on-write, for every module that holds it: tied weights stay tied), and every change is recorded
in the journal as what it replaced, so undoing a fix puts the shared tensor back. Memory grows by the tensors the
fixes touch, not by the model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from auditor.fixing.initplan import InitPlan
from auditor.fixing.rewrite import Journal


class Workspace:
    def __init__(self, model: nn.Module, source: nn.Module, shared: set[int]) -> None:
        self.model = model  # the copy being fixed (replaced by its GraphModule for fx captures)
        self.source = source  # the user's model: never written
        self.journal = Journal()
        self._shared = shared  # ids of the tensors still shared with the user's model
        self._index: dict[int, list[tuple[nn.Module, str]]] | None = None
        self.inits: InitPlan | None = None  # a model without weights (on meta): its planned inits (initplan.py)

    @classmethod
    def of(cls, source: nn.Module) -> Workspace:
        """A copy of `source` whose modules are new objects and whose tensors are the user's."""
        tensors = [*source.parameters(), *source.buffers()]
        memo: dict[int, Any] = {id(t): t for t in tensors}
        return cls(copy.deepcopy(source, memo), source, {id(t) for t in tensors})

    # --- writing tensors ------------------------------------------------------------------------------------
    def writable(self, module: nn.Module, name: str) -> torch.Tensor:
        """`module.<name>` as a tensor this workspace owns (copied on first write), ready for in-place changes.
        The copy replaces the shared tensor everywhere in the model, so tied weights stay tied."""
        tensor = _own_tensor(module, name)
        if tensor is None:
            raise KeyError(name)
        if id(tensor) not in self._shared:
            self._remember(module, name)
            return tensor
        fresh: torch.Tensor
        if isinstance(tensor, nn.Parameter):
            fresh = nn.Parameter(tensor.detach().clone(), requires_grad=tensor.requires_grad)
        else:
            fresh = tensor.detach().clone()
        for owner, attr in self._holders(tensor):
            self.set_tensor(owner, attr, fresh)
        return fresh

    def set_tensor(self, module: nn.Module, name: str, value: torch.Tensor | None) -> None:
        """Replace (or with None, drop) a parameter or buffer, recording what it was."""
        table = module._parameters if name in module._parameters else module._buffers
        before = table.get(name)
        table[name] = value

        def undo() -> None:
            table[name] = before

        self.journal.record(undo)

    def _remember(self, module: nn.Module, name: str) -> None:
        """An owned tensor is about to change in place: keep its values to undo that."""
        tensor = _own_tensor(module, name)
        assert tensor is not None
        saved = tensor.detach().clone()

        def undo() -> None:
            with torch.no_grad():
                tensor.copy_(saved)

        self.journal.record(undo)

    def _holders(self, tensor: torch.Tensor) -> list[tuple[nn.Module, str]]:
        """Every (module, name) that holds a shared tensor (indexed once: shared tensors never move)."""
        if self._index is None:
            self._index = {}
            for module in self.model.modules():
                for table in (module._parameters, module._buffers):
                    for name, value in table.items():
                        if value is not None and id(value) in self._shared:
                            self._index.setdefault(id(value), []).append((module, name))
        return self._index.get(id(tensor), [])

    # --- the finished model ----------------------------------------------------------------------------------
    def detach_from_source(self) -> None:
        """Give the fixed model its own copy of every tensor still shared with the user's model (the Python API
        hands the model to the caller, who may train it). Tied tensors get one copy and stay tied."""
        copies: dict[int, torch.Tensor] = {}
        for module in self.model.modules():
            for table in (module._parameters, module._buffers):
                for name, value in list(table.items()):
                    if value is None or id(value) not in self._shared or value.is_meta:  # meta: no values to share
                        continue
                    if id(value) not in copies:
                        fresh = value.detach().clone()
                        copies[id(value)] = nn.Parameter(fresh, requires_grad=value.requires_grad) if isinstance(value, nn.Parameter) else fresh
                    table[name] = copies[id(value)]
        self._shared = set()


def _own_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    if name in module._parameters:
        return module._parameters[name]
    return module._buffers.get(name)
