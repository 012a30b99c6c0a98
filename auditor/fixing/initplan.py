"""Fixing a model built without its weights (on meta): how its parameters are initialized stands in for them.

The audit of such a model read the init calls recorded while it was built (`auditor.loading.inits`). A fix that
would write values (a re-init, a new shortcut's weights) plans an init instead: its fill runs on the meta tensor
under a recorder (nothing is computed), and what was recorded replaces that parameter's init in the plan,
journaled like every other change so that undoing the fix restores it. The fix loop's graph rules read the plan
(`init_of`, as they read a build's record), and the written `model.py` draws every parameter as the plan says
(`initcode.py`); the buffers' values (masks, frequencies: constants the user's `__init__` computed) come from the
record too.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from auditor.fixing.rewrite import CannotFix, Journal


class InitPlan:
    """Each parameter's init: the build's record, or what a fix planned instead."""

    def __init__(self, record: Any, journal: Journal) -> None:
        self.record = record  # the InitRecord of the build (None: a model handed over on meta, nothing recorded)
        self.journal = journal
        self._planned: dict[int, tuple[torch.Tensor, Any, str]] = {}  # id(parameter) -> (it, its Init, why)

    @property
    def unknown(self) -> dict[str, str]:
        """Parameters whose init the build's record does not know, and why (the result's notes list them)."""
        return dict(self.record.unknown) if self.record is not None else {}

    def init_of(self, param: Any) -> Any:
        """What the graph rules read: the planned init, else the recorded one (None when neither is known)."""
        entry = self._planned.get(id(param))
        if entry is not None and entry[0] is param:
            return entry[1]
        return self.record.init_of(param) if self.record is not None else None

    def planned(self, param: Any) -> str | None:
        """Why a parameter's init was changed by a fix (None when it keeps the recorded one)."""
        entry = self._planned.get(id(param))
        return entry[2] if entry is not None and entry[0] is param else None

    def buffer_values(self, buffer: Any) -> torch.Tensor | None:
        return self.record.buffer_values(buffer) if self.record is not None else None

    def plan(self, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], write: Callable[[], Any], why: str) -> None:
        """Plan for each (parameter, tensor) pair the init `write()` gives the tensor (on meta; often the
        parameter itself) instead of running it; CannotFix when the record cannot follow it (then it cannot be
        written as code either)."""
        from auditor.loading.inits import recorded_writes

        inits = recorded_writes([written for _, written in pairs], write)
        missing = [tuple(t.shape) for (t, _), init in zip(pairs, inits) if init is None]
        if missing:
            raise CannotFix(f"the re-init of a tensor of shape {missing[0]} cannot be written as init code for a model without weights")
        for (param, _), init in zip(pairs, inits):
            self._set(param, (param, init, why))

    def _set(self, tensor: torch.Tensor, entry: tuple[torch.Tensor, Any, str]) -> None:
        key = id(tensor)
        before = self._planned.get(key)
        self._planned[key] = entry

        def undo() -> None:
            if before is None:
                self._planned.pop(key, None)
            else:
                self._planned[key] = before

        self.journal.record(undo)
