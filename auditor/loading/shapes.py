"""Which candidate inputs fit a model, decided without computing: one forward on fake tensors each.

Real forwards on wrong guesses are what made inference slow (a 224x224 image through a CIFAR GoogLeNet, only to
fail at its classifier after 40 s). Under a `FakeTensorMode` the same forward propagates shapes alone; the
model's state and the random streams are restored after each run. Fake tensors cost a one-time import of
torch's compiler stack (about as long as importing torch), so the engine first gives the most plausible
candidate a short real try (`time_budget`) and ranks on fake tensors only when that runs long.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from auditor.capture import eval_mode, quiet_torch
from auditor.capture.state import restored
from auditor.rng import preserved_rng


FIRST_TRY_SECONDS = 2.0


class OverBudget(BaseException):
    """The real attempt ran past its budget. A BaseException, so no capture method mistakes it for its own
    failure and tries the next."""


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Stop any module call that starts after `seconds` (a forward pre-hook on every module of the process)."""
    deadline = time.perf_counter() + seconds

    def check(module: nn.Module, args: Any) -> None:
        if time.perf_counter() > deadline:
            raise OverBudget

    handle = nn.modules.module.register_module_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


def rank(candidates: list[Any], fits: Callable[[Any], bool]) -> list[Any] | None:
    """The first candidate that fits, then the others in their order (a fake run can fail where a real one
    would not: data-dependent code, `.item()`; those are still tried for real). Only the real run on the chosen
    one is needed when it works, so the search stops there. None when no candidate fits."""
    chosen = next((c for c in candidates if fits(c)), None)
    return None if chosen is None else [chosen, *[c for c in candidates if c is not chosen]]


def runs_on_fake(model: nn.Module, inputs: tuple[Any, ...]) -> bool:
    """Whether the model's forward accepts inputs of these shapes, run on fake tensors (no data computed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._pytree import tree_map

    try:
        with restored(model), preserved_rng(), eval_mode(model), quiet_torch(), torch.no_grad():
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                fake = tree_map(lambda v: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v, inputs)
                model(*fake)
    except Exception:  # noqa: BLE001 - any failure means "not known to fit"
        return False
    return True
