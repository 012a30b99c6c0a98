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
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

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

    with nn.modules.module.register_module_forward_pre_hook(check):  # the handle removes the hook on leaving
        yield


@dataclass(frozen=True)
class FakeRun:
    """A forward on fake tensors: whether it fit (None: fake tensors cannot tell, the forward reads values),
    and how far it got (torch calls made before it stopped)."""

    fits: bool | None
    progress: int


def rank(candidates: list[Any], run: Callable[[Any], FakeRun]) -> tuple[list[Any], bool]:
    """The order to try candidates in for real, and whether a run that stops at a failed merge will do.

    The first candidate that fits on fake tensors comes first (only its real run is needed when it works, so
    the search stops there). Where none fits but some could not be judged on fake tensors (data-dependent code,
    `.item()`), those are tried for real in their order, for a run of the whole forward. Where every one is
    known not to fit, a merge fails at every size: the first that runs up to it will do."""
    undecided = []
    for candidate in candidates:
        verdict = run(candidate).fits
        if verdict:
            return [candidate, *[c for c in candidates if c is not candidate]], False
        if verdict is None:
            undecided.append(candidate)
    return (undecided, False) if undecided else (candidates, True)


def climb(start: Any, names: list[str], varied: Callable[[Any, str], list[Any]], run: Callable[[Any], FakeRun], passes: int = 2) -> Any | None:
    """A candidate that fits, found by fitting one argument at a time: for each argument in turn (`names`, the
    least certain first), its other proposals are tried with the rest kept, and the one whose fake forward gets
    furthest is kept (a source mask that fits carries the run to the target mask that does not yet); `passes`
    times over the arguments. None when no step makes it fit."""
    current, best = start, run(start)
    for _ in range(passes):
        moved = False
        for name in names:
            for other in varied(current, name):
                outcome = run(other)
                if outcome.fits:
                    return other
                if outcome.progress > best.progress:
                    current, best, moved = other, outcome, True
        if not moved:
            return None
    return None


def fake_run(model: nn.Module, inputs: tuple[Any, ...]) -> FakeRun:
    """The model's forward on fake tensors of these inputs' shapes (no data computed)."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    counter = _Counter()
    try:
        with restored(model), preserved_rng(), eval_mode(model), quiet_torch(), torch.no_grad():
            with fake_inputs(inputs) as fake, counter:
                model(*fake)
    except (DataDependentOutputException, DynamicOutputShapeException):
        return FakeRun(None, counter.calls)
    except Exception:  # noqa: BLE001 - any other failure means "does not fit"
        return FakeRun(False, counter.calls)
    return FakeRun(True, counter.calls)


class _Counter(TorchFunctionMode):
    """Counts the torch calls a forward makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def fake_inputs(inputs: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """Fake tensors of the inputs' shapes, inside the fake mode (the model's own tensors join it as used)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._pytree import tree_map

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield tree_map(lambda v: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v, inputs)
