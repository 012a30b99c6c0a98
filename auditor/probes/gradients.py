"""The gradient and signal probe at initialization: a few float32 forward/backward passes of the surrogate task,
measuring per weight layer (in forward order) the weight gradient norm, the output's mean and std, and at the
layer's input the signal's std and the norm of the gradient flowing back through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from auditor.capture.common import is_leaf
from auditor.graph import AuditGraph
from auditor.graph.weights import weight_uses
from auditor.probes.measurements import LayerStats
from auditor.probes.surrogate import primary_output
from auditor.probes.tensors import norm, total_norm
from auditor.probes.watch import tool_ops


def weight_layers(model: nn.Module, applied: frozenset[str] = frozenset()) -> dict[str, nn.Module]:
    """Modules that own a weight matrix themselves (Linear, Conv, Embedding, LSTM, MultiheadAttention, a user
    module with its own matrix and no submodules, or one whose forward applies its own matrix with `x @ w`,
    `F.linear`..., named in `applied`), by qualified name."""
    found = {}
    for qualname, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.dim() >= 2]
        if own and (is_leaf(module) or not any(True for _ in module.children()) or qualname in applied):
            found[qualname] = module
    return found


def applied_by_calls(graph: AuditGraph | None) -> frozenset[str]:
    """The modules whose own weights the forward applies with a function call (`x @ self.w`): what owns them."""
    if graph is None:
        return frozenset()
    uses, _ = weight_uses(graph)
    return frozenset(use.name.rpartition(".")[0] for use in uses if not use.node.is_module)


@dataclass
class _Call:
    """The first call of one layer in one pass; tensors stay 0-d tensors until the pass ends (no syncs)."""

    order: int
    in_std: Any = None
    in_grad_norm: Any = None
    act_mean: Any = None
    act_std: Any = None
    raw_input: bool = False


@dataclass
class _Pass:
    calls: dict[str, _Call] = field(default_factory=dict)


class LayerRecorder:
    """Forward hooks on the weight layers of the working copy; one `_Pass` per forward/backward pass."""

    def __init__(self, model: nn.Module, applied: frozenset[str] = frozenset()) -> None:
        self.model = model
        self.layers = weight_layers(model, applied)
        self.passes: list[_Pass] = []
        self.current: _Pass | None = None
        self.raw_ids: set[int] = set()
        self._handles: list[Any] = []
        for qualname, module in self.layers.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(qualname), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post(qualname)))

    def start(self, inputs: tuple[Any, ...]) -> None:
        self.current = _Pass()
        self.passes.append(self.current)
        self.raw_ids = {id(t) for t in inputs if isinstance(t, torch.Tensor)}

    def stop(self) -> None:
        self.current = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, qualname: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self.current is None or qualname in self.current.calls:
                return
            call = _Call(order=len(self.current.calls))
            self.current.calls[qualname] = call
            tensor = _first_float((args, kwargs))
            if tensor is None:
                return
            call.raw_input = id(tensor) in self.raw_ids
            with torch.no_grad(), tool_ops():
                call.in_std = tensor.detach().float().std() if tensor.numel() > 1 else None
            if tensor.requires_grad:
                def on_grad(grad: torch.Tensor, call: _Call = call) -> None:
                    with torch.no_grad():
                        call.in_grad_norm = norm(grad)

                tensor.register_hook(on_grad)

        return hook

    def _post(self, qualname: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            call = self.current.calls.get(qualname) if self.current is not None else None
            if call is None or call.act_std is not None:
                return
            tensor = primary_output(output)
            if tensor is None or tensor.numel() < 2:
                return
            with torch.no_grad(), tool_ops():
                value = tensor.detach().float()
                call.act_mean, call.act_std = value.mean(), value.std()

        return hook

    def grad_norms(self) -> dict[str, float | None]:
        """After a backward: ||grad|| over each layer's own parameters (None when none has a gradient)."""
        return {qualname: _joint_norm([p.grad for p in module.parameters(recurse=False) if p.grad is not None]) for qualname, module in self.layers.items()}

    def summary(self, grads: list[dict[str, float | None]]) -> list[LayerStats]:
        """Per layer, in the order of the first pass's calls, averaged over passes; then the layers never called
        whose weights still got a gradient (a ParameterList whose matrices the forward applies itself: `x @ w`),
        with their gradient norms only."""
        if not self.passes:
            return []
        first = self.passes[0].calls
        ordered = sorted(first, key=lambda name: first[name].order)
        ordered += [name for name in self.layers if name not in first and any(g.get(name) is not None for g in grads)]
        stats = []
        for qualname in ordered:
            module = self.layers[qualname]
            calls = [p.calls[qualname] for p in self.passes if qualname in p.calls] or [_Call(order=len(ordered))]
            grad_values = [g[qualname] for g in grads if qualname in g]
            stats.append(LayerStats(
                module=qualname,
                type=type(module).__name__,
                grad_norm=_mean(grad_values),
                weight_norm=_joint_norm(list(module.parameters(recurse=False))),
                act_mean=_mean([c.act_mean for c in calls]),
                act_std=_mean([c.act_std for c in calls]),
                in_std=_mean([c.in_std for c in calls]),
                in_grad_norm=_mean([c.in_grad_norm for c in calls]),
                raw_input=calls[0].raw_input,
            ))
        return stats


def _joint_norm(tensors: list[torch.Tensor]) -> float | None:
    return total_norm(tensors) if tensors else None


def _mean(values: list[Any]) -> float | None:
    """The mean over passes; a non-finite pass makes the mean non-finite (that is a finding of its own)."""
    numbers = [float(v) for v in values if v is not None]
    if not numbers:
        return None
    return sum(numbers) / len(numbers)


def _first_float(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else None
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_float(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return _first_float(list(value.values()))
    return None
