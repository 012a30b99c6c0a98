"""Watching every op of a forward (and optionally backward) pass: value ranges and where non-finite values start.

A `TorchFunctionMode` sees each function, tensor method and operator the model's forwards call (`F.linear`
inside `nn.Linear`, `h @ h.T` in a user forward) and the module hooks keep the stack of modules running, so
every op has an owner module and, when it matters, the user's forward line. Module hooks would miss the
functional ops; this sees them whatever the capture method was.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from auditor.capture.common import call_label, is_leaf, iter_tensors
from auditor.locations import user_frame
from auditor.probes.measurements import FLOAT16_MAX, OpEvent, Site
from auditor.probes.tensors import all_finite, max_abs

KEEP_OVERFLOW = 5  # overflow events kept (the count covers them all)
# The dtype-adaptive mask idiom `masked_fill(mask, torch.finfo(x.dtype).min)` yields float32's extreme in a
# float32 run and float16's under autocast: not an overflow.
_SENTINEL = 0.99 * torch.finfo(torch.float32).max
# Ops that only re-view or move values, or allocate without writing: nothing to measure.
_SAME_VALUES = frozenset({
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "contiguous", "__getitem__", "unsqueeze",
    "squeeze", "expand", "expand_as", "chunk", "split", "unbind", "narrow", "select", "detach", "clone", "to",
    "float", "type_as", "view_as", "reshape_as", "movedim", "swapaxes", "repeat", "tile", "cat", "stack",
    "__get__", "size", "dim", "numel", "requires_grad_", "__setitem__", "cpu", "cuda",
    # uninitialized memory (stochastic depth's `x.new_empty(shape).bernoulli_(p)`): garbage until written
    "empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided",
})


class OpWatch(TorchFunctionMode):
    """The shared part: module hooks keep the stack of modules running, and every op with a floating-point
    result goes to `_inspect(label, owner module, args, kwargs, result, site)`. Ops inside a torch.nn module
    that the mode cannot see (an LSTM's fused kernel) are inspected as the module's own output."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self._handles: list[Any] = []
        self._seen = 0  # ops inspected so far (a leaf module whose ops the mode saw is not inspected again)
        self._entered: list[int] = []
        self.active = False  # the module hooks act only while the mode is entered

    def __enter__(self) -> Any:
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        self.active = False
        return super().__exit__(*exc)

    def attach(self, model: nn.Module) -> Any:
        for qualname, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._push(qualname)))
            self._handles.append(module.register_forward_hook(self._pop(qualname, module, is_leaf(module))))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset_stack(self) -> None:
        self.stack, self._entered = [], []

    def _push(self, qualname: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if not self.active:
                return
            self.stack.append(qualname)
            self._entered.append(self._seen)

        return hook

    def _pop(self, qualname: str, module: nn.Module, leaf: bool) -> Callable[..., None]:
        label = f"nn.{type(module).__name__}"

        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            if not self.active:
                return
            entered = self._seen
            if self.stack and self.stack[-1] == qualname:
                self.stack.pop()
                entered = self._entered.pop()
            if leaf and entered == self._seen:
                with tool_ops():
                    self._inspect(label, qualname, args, {}, output, site=None)

        return hook

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _SAME_VALUES or name.startswith("is_"):
            return result
        if _QUIET[0]:
            return result  # the tool's own measurements (hooks computing a std), not the model's ops
        site = user_frame(depth=2)
        owner = self.stack[-1] if self.stack else ""
        self._seen += 1
        self._inspect(call_label(func, name), owner, args, kwargs, result, site=site)
        return result

    def _inspect(self, label: str, owner: str, args: Any, kwargs: Any, result: Any, site: Site | None) -> None:
        raise NotImplementedError


class Watcher(OpWatch):
    """Records, for the passes run inside it: the largest finite |value| and which ops exceed `limit`, the first
    op that produced a non-finite value from finite inputs, and (with `backward=True`) the first op whose
    backward turned finite incoming gradients into non-finite ones."""

    def __init__(self, limit: float = FLOAT16_MAX, *, backward: bool = False) -> None:
        super().__init__()
        self.limit = limit
        self.backward = backward
        self.max_abs = 0.0
        self.max_abs_module: str | None = None
        self.overflow: list[OpEvent] = []
        self.overflow_count = 0
        self.origin: OpEvent | None = None
        self.backward_origin: OpEvent | None = None
        self._hooked: set[int] = set()
        self._keep: list[Any] = []  # grad_fn objects hooked (their ids stay unique while kept)

    def _inspect(self, label: str, owner: str, args: Any, kwargs: Any, result: Any, site: Site | None) -> None:
        for tensor in _floats(result):
            if tensor.numel() == 0:
                continue
            peak = max_abs(tensor)
            if math.isfinite(peak):
                self._range(label, owner, peak, site)
            elif self.origin is None and _all_finite(args, kwargs) and not _non_finite_scalars(args, kwargs):
                self.origin = OpEvent(label, owner, site, peak)
            if self.backward and tensor.grad_fn is not None and id(tensor.grad_fn) not in self._hooked:
                self._hook_backward(tensor.grad_fn, label, owner, site)

    def _range(self, label: str, owner: str, peak: float, site: Site | None) -> None:
        if peak >= _SENTINEL:
            return
        if peak > self.max_abs:
            self.max_abs, self.max_abs_module = peak, owner
        if peak > self.limit:
            self.overflow_count += 1
            if len(self.overflow) < KEEP_OVERFLOW:
                self.overflow.append(OpEvent(label, owner, site, peak))

    def _hook_backward(self, grad_fn: Any, label: str, owner: str, site: Site | None) -> None:
        self._hooked.add(id(grad_fn))
        self._keep.append(grad_fn)

        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            if self.backward_origin is not None:
                return
            incoming = [g for g in grad_outputs if isinstance(g, torch.Tensor)]
            produced = [g for g in grad_inputs if isinstance(g, torch.Tensor)]
            if all(all_finite(g) for g in incoming) and not all(all_finite(g) for g in produced):
                peak = max(max_abs(g) for g in produced if not all_finite(g))
                self.backward_origin = OpEvent(label, owner, site, peak, phase="backward")

        grad_fn.register_hook(hook)


_QUIET = [0]


@contextlib.contextmanager
def tool_ops() -> Iterator[None]:
    """Ops the tool runs itself while a watch is active (a hook computing a std): not the model's, not seen."""
    _QUIET[0] += 1
    try:
        yield
    finally:
        _QUIET[0] -= 1





def _all_finite(args: Any, kwargs: Any) -> bool:
    with torch.no_grad():
        return all(all_finite(t) for t in _floats((args, kwargs)))


def _non_finite_scalars(args: Any, kwargs: Any) -> bool:
    """`masked_fill(mask, float("-inf"))`, `torch.full(..., -inf)`: a deliberate infinity, not a failure."""
    stack = [args, kwargs]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


class OpRecorder(OpWatch):
    """Keeps a float32 copy of every op's output, with its label, owner and site, to compare two runs op by op
    (float32 and autocast issue the same ops in the same order: autocast acts below `__torch_function__`)."""

    def __init__(self, limit: int = 5000) -> None:
        super().__init__()
        self.limit = limit
        self.records: list[tuple[OpEvent, torch.Tensor]] = []

    def _inspect(self, label: str, owner: str, args: Any, kwargs: Any, result: Any, site: Site | None) -> None:
        if len(self.records) >= self.limit:
            return
        tensor = next(_floats(result), None)
        if tensor is not None:
            with torch.no_grad():
                self.records.append((OpEvent(label, owner, site), tensor.detach().float().clone()))


def _floats(value: Any) -> Iterator[torch.Tensor]:
    return (t for t in iter_tensors(value) if t.is_floating_point())
