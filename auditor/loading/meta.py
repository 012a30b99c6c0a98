"""Real weights or only their shapes: decided once, while a model is built, against a memory budget.

Every model the tool builds is built on the meta device first, with its init calls recorded
(`auditor.loading.inits`): no memory, little time, and the weights' size. A model within the budget is then built
again with real weights; one over it (or any model with `--meta`) stays on meta, and the record stands in for the
values the init rules would read. Everything after loading asks the `Weights` it gets: captures receive meta
inputs because the model's parameters are on meta (shapes and dtypes flow through every op, nothing is
computed); probes, which need real weights and a copy of them, ask `Weights.refusal`; `--fix` fixes a model on
meta without its weights (its inits planned from the record, `auditor.fixing.initplan`) and asks `refusal`
only of a model with real weights over the budget.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from auditor.errors import first_line
from auditor.loading.inits import FACTORIES, InitRecord, InitRecorder, factory_on_meta
from auditor.memory import default_budget, format_size


@dataclass(frozen=True)
class WeightPolicy:
    """`--meta` and `--max-memory` (bytes; None: the default share of available memory)."""

    meta: bool = False
    max_memory: int | None = None

    def budget(self) -> int:
        return self.max_memory if self.max_memory is not None else default_budget()


@dataclass
class Weights:
    """Whether a loaded model holds real weights, how big they are, and the budget they were held against."""

    on_meta: bool = False
    size: int = 0  # bytes of parameters and buffers
    budget: int | None = None
    forced: bool = False  # --meta
    inits: InitRecord | None = None  # the init calls recorded while it was built on meta (what the rules read then)
    record: InitRecord | None = None  # the same record for a model then built again with weights: which user line
    # drew each weight (`--fix` in place edits it); the rules read the weights' values

    def reason(self) -> str:
        if self.forced:
            return "--meta"
        if self.inits is None:
            return "its parameters are on the meta device"
        return f"its weights ({format_size(self.size)}) exceed the {format_size(self.budget or 0)} budget"

    def note(self) -> str | None:
        """Why a model was audited without its weights (None when it was not)."""
        if not self.on_meta:
            return None
        hint = "" if self.forced or self.inits is None else f"; --max-memory {_rounded_up(self.size)} audits it with real weights"
        return f"audited on meta, without weights: {self.reason()}{hint}"

    @property
    def written_by(self) -> InitRecord | None:
        """The record of the user's init calls, with or without weights."""
        return self.inits if self.inits is not None else self.record

    def notes(self) -> list[str]:
        """The capture notes of a model audited without its weights: that it was, and which weights' init the
        record does not know (the init rules do not judge those)."""
        note = self.note()
        if note is None:
            return []
        if self.inits is None:
            return [note, "no values and no recorded init calls: the init rules do not judge its weights"]
        by_reason: dict[str, list[str]] = {}
        for name, why in self.inits.unknown.items():
            by_reason.setdefault(why, []).append(name)
        return [note] + [
            f"init not known for {', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}: "
            f"{why}; the init rules do not judge them"
            for why, names in by_reason.items()
        ]

    def refusal(self, what: str) -> str | None:
        """Why `what` (the probes, --fix), which needs real weights and a copy of them, may not run; None if it may."""
        if self.on_meta:
            hint = "drop --meta" if self.forced else f"pass --max-memory {_rounded_up(self.size)} or more"
            if self.inits is None:
                return f"{what} needs the real weights, and this model has none ({self.reason()})"
            return f"{what} needs the real weights, and this model was audited without them ({self.reason()}); {hint} to allow it"
        if self.budget is not None and self.size > self.budget:
            return (f"{what} needs a copy of the weights, and they ({format_size(self.size)}) exceed the "
                    f"{format_size(self.budget)} budget; pass --max-memory {_rounded_up(self.size)} or more to allow it")
        return None


class MetaBuilder:
    """Builds the models of one run under a `WeightPolicy`, and keeps what it decided for each."""

    def __init__(self, policy: WeightPolicy) -> None:
        self.policy = policy
        self._weights: dict[int, tuple[nn.Module, Weights]] = {}

    def build(self, make: Callable[[], Any]) -> Any:
        """`make()` on meta; again with real weights when they fit the budget. Returns what `make` returns."""
        budget = self.policy.budget()
        recorder = InitRecorder()
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), recorder.recording():
                warnings.simplefilter("ignore")  # torch's warnings about meta tensors; the real build shows the user's
                model = make()
        except Exception as exc:  # noqa: BLE001 - the constructor reads weight values, say; with real weights it may work
            if self.policy.meta:
                raise
            with _stopped_above(budget, f"it cannot be built on meta ({first_line(exc)})"):
                return make()
        if not isinstance(model, nn.Module):
            return model
        if not recorder.built_here(model):
            # (partly) made before this build: an instance made at import, a module reused from elsewhere. The
            # user's own objects are never moved: the real model is what there is.
            if any(p.is_meta for p in model.parameters()):
                with _stopped_above(budget, "it reuses modules made before its build, so it cannot be measured on meta"):
                    model = make()
            return model
        inits = recorder.record(model)
        size = weight_bytes(model)
        if self.policy.meta or size > budget:
            self._weights[id(model)] = (model, Weights(True, size, budget, self.policy.meta, inits))
            return model
        real = make()
        if isinstance(real, nn.Module):
            self._weights[id(real)] = (real, Weights(False, size, budget, record=inits))
        return real

    def weights_of(self, model: nn.Module) -> Weights:
        """What was decided for a model this builder built; for any other (an instance made at import, a
        pickle, a live model), its own state held against the budget."""
        entry = self._weights.get(id(model))
        if entry is not None and entry[0] is model:
            return entry[1]
        return weights_of(model, self.policy.budget())


def weights_of(model: nn.Module, budget: int | None) -> Weights:
    """The `Weights` of a model built elsewhere: on meta if its parameters are (nothing recorded), else real."""
    on_meta = any(t.is_meta for t in model.parameters())
    return Weights(on_meta, weight_bytes(model), budget)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, shared ones once."""
    seen: dict[int, torch.Tensor] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if not is_lazy(tensor):  # a lazy module's shape is known after its first forward
            seen[id(tensor)] = tensor
    return sum(t.numel() * t.element_size() for t in seen.values())


class OverBudget(Exception):
    """A build with real weights went over the budget (its size could not be measured on meta first)."""


class _FactoryWatch(TorchFunctionMode):
    """Calls `over(size)` before a tensor factory allocates `size` bytes."""

    def __init__(self, over: Callable[[int], None]) -> None:
        super().__init__()
        self.over = over

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in FACTORIES:
            shaped = factory_on_meta(func, args, kwargs)
            if shaped is not None:
                self.over(shaped.numel() * shaped.element_size())
        return func(*args, **kwargs)


@contextlib.contextmanager
def _stopped_above(budget: int, why: str) -> Iterator[None]:
    """Stop a build with real weights once the tensors it registered exceed `budget`, or before a tensor that
    would take them past it is allocated: before the init that would fill them, so a model too big for memory
    fails fast instead of exhausting it. `why`: why its size could not be measured on meta first."""
    from torch.nn.modules.module import register_module_buffer_registration_hook as on_buffer
    from torch.nn.modules.module import register_module_parameter_registration_hook as on_parameter

    sizes: dict[int, int] = {}

    def over(extra: int) -> None:
        if sum(sizes.values()) + extra > budget:
            raise OverBudget(
                f"its weights exceed the {format_size(budget)} budget (more than {format_size(sum(sizes.values()) + extra)}) "
                f"and {why}; raise --max-memory to build it with weights"
            )

    def count(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None and not is_lazy(tensor):
            sizes[id(tensor)] = tensor.numel() * tensor.element_size()
        over(0)

    with on_parameter(count), on_buffer(count), _FactoryWatch(over):
        yield


def _rounded_up(size: int) -> str:
    """A --max-memory value just above `size`, in whole GiB (MiB for small models)."""
    mib = 2**20
    if size < 2**30:
        return f"{-(-size // mib) + 1}MiB"
    return f"{-(-size // 2**30) + 1}GiB"
