"""Mixed precision: autocast against float32 on the same batch, and a few real AMP training steps.

Autocast runs float16 on CUDA and bfloat16 on CPU (float16 autocast on CPU is slow and not how CPUs train); on
CPU its convolutions and matrix products compute in float32 from the bfloat16 values (`reduced.py`: the same
values, at a float32 op's cost, where CPUs without bfloat16 instructions emulate it at 10-30x).
Both forwards of the comparison run in eval mode with every dropout switched off (functional ones too), so the
only difference is the precision: in training mode BatchNorm's batch statistics over a small probe batch
amplify rounding (a ResNet-50 differs by ~9% in bfloat16 at init in training mode, 0.3% in eval mode), which
would hide the real divergences (cancellation, positions or sums kept in low precision) behind noise. The float32 activation ranges come from the gradient probe's watched passes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from auditor.probes.isolation import seed as seed_rng
from auditor.probes.measurements import OpEvent, Precision
from auditor.probes.reduced import rounded_kernels
from auditor.probes.surrogate import Task, primary_output
from auditor.probes.tensors import all_finite
from auditor.probes.watch import OpRecorder

DROPOUTS = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "feature_dropout"})


def autocast_dtype(device_type: str) -> torch.dtype | None:
    return {"cuda": torch.float16, "cpu": torch.bfloat16}.get(device_type)


class NoDropout(TorchFunctionMode):
    """Every dropout call (module or functional) returns its input: two forwards then differ only in precision."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        if getattr(func, "__name__", "") in DROPOUTS:
            return args[0] if args else kwargs["input"]  # type: ignore[index]
        return func(*args, **(kwargs or {}))


def relative_error(low: torch.Tensor, ref: torch.Tensor) -> float:
    """||low - ref|| / ||ref|| (the absolute error when the reference is all zeros)."""
    low, ref = low.detach().double(), ref.detach().double()
    scale = float(ref.norm()) if ref.numel() else 0.0
    error = float((low - ref).norm()) if ref.numel() else 0.0
    return error / scale if scale > 0 else error


def compare(model: nn.Module, task: Task, precision: Precision, device_type: str, tolerance: float, seed: int) -> None:
    """Autocast output against float32 on batch 0; beyond `tolerance` (or non-finite only under autocast),
    find the first atomic module whose output diverges."""
    dtype = autocast_dtype(device_type)
    assert dtype is not None
    batch = task.batch(0)
    model.eval()
    with torch.no_grad(), NoDropout():
        seed_rng(seed, torch.device(device_type))
        reference = model(*batch)
        seed_rng(seed, torch.device(device_type))
        with torch.autocast(device_type, dtype=dtype), rounded_kernels(device_type):
            low = model(*batch)
    ref, got = primary_output(reference), primary_output(low)
    if ref is None or got is None:
        return
    ref_finite, got_finite = all_finite(ref), all_finite(got)
    if not ref_finite:
        return  # float32 itself fails: the gradient probe reports it
    precision.autocast_nonfinite = not got_finite
    precision.autocast_error = relative_error(got, ref) if got_finite else math.inf
    if precision.autocast_nonfinite or precision.autocast_error > tolerance:
        precision.divergence = _first_divergence(model, batch, device_type, dtype, tolerance, seed)


def _first_divergence(model: nn.Module, batch: tuple[Any, ...], device_type: str, dtype: torch.dtype, tolerance: float, seed: int) -> OpEvent | None:
    """Run both precisions again recording every op's output; the first op (in call order) whose autocast
    output differs from float32's beyond tolerance, with its module and forward line."""
    runs = [OpRecorder().attach(model), OpRecorder().attach(model)]
    try:
        with torch.no_grad(), NoDropout():
            seed_rng(seed, torch.device(device_type))
            with runs[0]:
                model(*batch)
            seed_rng(seed, torch.device(device_type))
            with torch.autocast(device_type, dtype=dtype), rounded_kernels(device_type), runs[1]:
                model(*batch)
    finally:
        for run in runs:
            run.detach()
    for (event, ref), (other, got) in zip(runs[0].records, runs[1].records):
        if (event.op, event.module) != (other.op, other.module) or ref.shape != got.shape:
            break  # the two runs took different paths: stop comparing
        if not all_finite(ref):
            continue
        error = relative_error(got, ref) if all_finite(got) else math.inf
        if error > tolerance:
            event.value = error
            return event
    return None


def amp_steps(dtype: torch.dtype, configured: int) -> int:
    """How many AMP training steps show something. Under float16 GradScaler starts at 2^16 and halves on every
    overflow, so several steps tell a scaler that settles from one that skips every step (`probe-steps`).
    bfloat16 has float32's exponent range: nothing overflows that float32 does not, the scaler never backs off,
    and one step shows whether an AMP step (autocast forward, backward, unscale_, clipping, update) stays
    finite; more would repeat it at nearly the same weights for the price of a training step each."""
    configured = max(0, configured)
    return configured if dtype == torch.float16 else min(configured, 1)


def train_steps(model: nn.Module, task: Task, precision: Precision, device_type: str, steps: int, max_norm: float, seed: int) -> list[float]:
    """`steps` real training steps: autocast forward, GradScaler-scaled backward, `unscale_`, clip to
    `max_norm`, `scaler.step`, `scaler.update` (plain SGD, lr 0.01: the steps only have to be real, and
    clipping bounds them; `torch.optim` is not used because importing it imports torch._dynamo, ~1.3 s). Returns each step's total gradient norm before clipping."""
    dtype = autocast_dtype(device_type)
    assert dtype is not None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return []
    optimizer = _SGD(params, lr=0.01)
    scaler = torch.amp.GradScaler(device_type)
    norms: list[float] = []
    for step in range(steps):
        batch = task.batch(step)
        optimizer.zero_grad(set_to_none=True)
        seed_rng(seed + 100 + step, torch.device(device_type))
        with rounded_kernels(device_type):  # forward and backward
            with torch.autocast(device_type, dtype=dtype):
                output = model(*batch)
            loss = task.loss(output, step)
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        precision.steps += 1
        precision.losses.append(float(loss.detach()))
        norms.append(norm)
        if scaler.get_scale() < scale:
            precision.skipped_steps += 1
    precision.loss_scale = scaler.get_scale()
    with torch.no_grad():
        params_finite = all(all_finite(p) for p in params)
    precision.finite = params_finite and all(math.isfinite(v) for v in precision.losses)
    return norms


class _SGD:
    """Plain SGD with the part of the `torch.optim.Optimizer` interface GradScaler uses."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.param_groups = [{"params": params, "lr": lr}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
