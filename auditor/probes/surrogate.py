"""The stand-in training task: seeded batches shaped like the captured inputs and a loss suited to the output.

Logits (a Linear layer's [N, C] or [N, T, V] output) get cross-entropy against random labels; anything else gets
MSE against a unit-scale random target; a model that returns a scalar is taken to return its own loss. A caller
that knows the real training loss (the Python API's `loss=`, the Lightning and Trainer callbacks) supplies it
instead; if it fails on its first use, the surrogate takes over for the whole run.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from auditor.capture.common import iter_tensors
from auditor.errors import first_line
from auditor.graph import AuditGraph, ops

CROSS_ENTROPY = "cross_entropy"
MSE = "mse"
OUTPUT = "output"


class Task:
    def __init__(self, inputs: tuple[Any, ...], graph: AuditGraph | None, seed: int, given: Callable[[Any], torch.Tensor] | None = None, given_name: str = "given") -> None:
        self.inputs = inputs
        self.graph = graph
        self.seed = seed
        self.kind: str | None = None  # decided on the first output seen
        self.given, self.given_name = given, given_name  # the caller's training loss of an output
        self.given_failed: str | None = None  # why the given loss could not be used

    def batch(self, index: int) -> tuple[Any, ...]:
        """Batch 0 is the captured inputs themselves; later ones are resampled like them (same shape, dtype,
        mean and spread; integer inputs within the captured range; masks and booleans kept)."""
        if index == 0:
            return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in self.inputs)
        generator = torch.Generator().manual_seed(self.seed * 1000 + index)
        return tuple(_resample(t, generator) if isinstance(t, torch.Tensor) else t for t in self.inputs)

    def loss(self, output: Any, index: int) -> torch.Tensor:
        """The given training loss of `output`, else the surrogate one (labels and targets seeded by `index`),
        computed in float64 so that an exploding output gives a huge loss, not an overflow of the loss itself."""
        if self.given is not None:
            try:
                value = self.given(output)
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise TypeError(f"it returned {type(value).__name__}, not a scalar tensor")
            except Exception as exc:  # noqa: BLE001 - on first use: fall back to the surrogate, noted
                if self.kind is not None:
                    raise
                self.given, self.given_failed = None, first_line(exc)
            else:
                self.kind = self.given_name
                return value
        primary = primary_output(output)
        if primary is None:
            raise ValueError("the model returned no floating-point tensor to compute a loss on")
        if self.kind is None:
            self.kind = self._choose(primary)
        generator = torch.Generator().manual_seed(self.seed * 1000 + 500 + index)
        value = primary.double()
        if self.kind == OUTPUT:
            return value.sum()
        if self.kind == CROSS_ENTROPY:
            classes = value.shape[-1]
            labels = torch.randint(0, classes, tuple(value.shape[:-1]), generator=generator).to(value.device)
            return F.cross_entropy(value.reshape(-1, classes), labels.reshape(-1))
        target = torch.randn(tuple(value.shape), generator=generator, dtype=torch.float64).to(value.device)
        return F.mse_loss(value, target)

    def _choose(self, primary: torch.Tensor) -> str:
        if primary.numel() == 1:
            return OUTPUT
        if primary.dim() in (2, 3) and primary.shape[-1] >= 2 and self._ends_in_linear():
            return CROSS_ENTROPY
        return MSE

    def _ends_in_linear(self) -> bool:
        output = self.graph.output if self.graph is not None else None
        if output is None:
            return False
        producers = self.graph.predecessors(output)
        return bool(producers) and producers[0].op == ops.LINEAR


def primary_output(output: Any) -> torch.Tensor | None:
    """The first floating-point tensor of a (nested) model output: a tensor, tuple, list, dict or ModelOutput."""
    for tensor in iter_tensors(output):
        if tensor.is_floating_point():
            return tensor
    return None



def _resample(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if tensor.dtype == torch.bool or tensor.numel() < 2:
        return tensor.clone()
    if tensor.is_floating_point():
        flat = tensor.detach().float()
        if bool(((flat == 0) | (flat == 1)).all()):
            return tensor.clone()  # a mask
        mean, std = flat.mean(), flat.std()
        fresh = torch.randn(tensor.shape, generator=generator).to(tensor.device) * std + mean
        return fresh.to(tensor.dtype)
    if tensor.is_complex():
        return tensor.clone()
    low, high = int(tensor.min()), int(tensor.max())
    return torch.randint(low, high + 1, tensor.shape, generator=generator).to(device=tensor.device, dtype=tensor.dtype)
