"""Audit in float32 semantics, whatever precision the caller trains in.

A training callback runs inside the user's mixed-precision setup: an active `torch.autocast`, or a forward that
enters one itself (accelerate's `prepare_model` wraps `model.forward` in autocast; a `@torch.autocast` forward).
torch.export records such a region as one `wrap_with_autocast` higher-order op whose inside the rules never see
(a planted dropout-before-GELU in BERT went unreported: 49 nodes instead of 126). The graph, the init rules and
the float32 probe passes must not depend on it:

- `autocast_off()`: every autocast the caller has active is off for the audit (the mixed-precision probe turns
  its own on inside, which still works);
- `inert_autocast()`: while a graph is captured, the autocast regions the forward enters do nothing, so every
  capture traces the float32 ops inline.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

# Every device type with an autocast of its own (a type without the backend built still answers).
_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu")


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """The caller's active autocasts off for the duration, back on afterwards."""
    with contextlib.ExitStack() as stack:
        for device_type in _DEVICE_TYPES:
            try:
                enabled = torch.is_autocast_enabled(device_type)
            except RuntimeError:  # a device type this build does not know
                continue
            if enabled:
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


@contextlib.contextmanager
def inert_autocast() -> Iterator[None]:
    """`with torch.autocast(...)` (and its decorator form, and torch.cuda.amp.autocast, which enter through it)
    does nothing while this is active. Scoped to a capture: the class is torch's, so the patch is undone on exit."""
    autocast = torch.amp.autocast_mode.autocast
    saved = autocast.__dict__["__enter__"], autocast.__dict__["__exit__"]

    def enter(self: Any) -> Any:
        return self

    def exit_(self: Any, *exc: Any) -> bool:
        return False

    with autocast_off():  # entered before the patch, which would make it inert too
        autocast.__enter__, autocast.__exit__ = enter, exit_  # type: ignore[method-assign]
        try:
            yield
        finally:
            autocast.__enter__, autocast.__exit__ = saved  # type: ignore[method-assign]
