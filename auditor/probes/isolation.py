"""The probes never change the user's model or the process's random streams.

They work on a deep copy; the random states (Python, NumPy, torch CPU and CUDA) and every module's training
flag are saved before and put back after, whatever happens in between.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
import torch.nn as nn

from auditor.rng import preserved_rng


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore the RNG states, grad mode and each module's train/eval flag on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grad_enabled = torch.is_grad_enabled()
    try:
        with preserved_rng():
            yield
    finally:
        for module, training in modes:
            module.training = training
        torch.set_grad_enabled(grad_enabled)


def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy to measure on: its own parameters, buffers and gradients, nothing shared."""
    clone = copy.deepcopy(model)
    for parameter in clone.parameters():
        parameter.grad = None
    return clone


def seed(value: int, device: torch.device) -> None:
    """Seed dropout and the like for one pass: the CPU generator, and the CUDA ones when the model lives there.
    Not `torch.manual_seed`: on a machine with a GPU it would also queue a seed for CUDA generators the user has
    not initialized yet, which no restore could undo."""
    torch.default_generator.manual_seed(value)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(value)
