"""Whole-tensor checks the probes run on every weight, gradient and activation, at memory speed.

On a VGG's 25088x4096 weight, `torch.isfinite(w).all()` takes ~0.5 s and `w.abs().amax()` or `w.pow(2).sum()`
~0.2 s (each allocates a temporary the size of the tensor), while a plain sum, `aminmax` or `vector_norm` reads
the tensor once without allocating (~15-35 ms). NaN and Inf propagate through all three.
"""

from __future__ import annotations

import torch


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf anywhere. A finite sum proves it; a non-finite one (NaN, Inf, or a sum of huge finite values
    that overflows) is settled element by element."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    with torch.no_grad():
        if bool(torch.isfinite(tensor.detach().sum())):
            return True
        return bool(torch.isfinite(tensor.detach()).all())


def max_abs(tensor: torch.Tensor) -> float:
    """max |x| (NaN when any element is NaN)."""
    with torch.no_grad():
        low, high = torch.aminmax(tensor.detach())
        return max(-float(low), float(high))


def norm(tensor: torch.Tensor) -> torch.Tensor:
    """The L2 norm as a 0-d float32 tensor (no sync: callers convert when the pass is over)."""
    with torch.no_grad():
        return torch.linalg.vector_norm(tensor.detach().float())


def total_norm(tensors: list[torch.Tensor]) -> float:
    """The L2 norm of several tensors taken together (what `clip_grad_norm_` compares with its threshold)."""
    if not tensors:
        return 0.0
    with torch.no_grad():
        return float(torch.linalg.vector_norm(torch.stack([norm(t) for t in tensors])))
