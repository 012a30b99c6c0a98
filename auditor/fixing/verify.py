"""Running a fixed model and comparing outputs: the checks that a fix keeps what it claims to keep and that
the written folder reproduces the model fixed in memory."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import torch
import torch.nn as nn

from auditor.errors import first_line


class FixFailure(Exception):
    """--fix could not produce a verified model for this target."""


def eval_outputs(model: nn.Module, inputs: tuple[Any, ...]) -> list[torch.Tensor]:
    """The output tensors in eval mode (fx's GraphModule prints a failing forward's code to stderr: muted;
    re-initialized recurrent weights are not one cuDNN chunk, which only costs speed here: not warned)."""
    from auditor.capture import eval_mode

    with eval_mode(model), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
        out = model(*inputs)
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def try_outputs(model: nn.Module, inputs: tuple[Any, ...]) -> list[torch.Tensor] | None:
    """The outputs, or None while the model does not run (a residual add still mismatched)."""
    try:
        return eval_outputs(model, inputs)
    except Exception:  # noqa: BLE001
        return None


def runs(model: nn.Module, inputs: tuple[Any, ...], why: str | None = None) -> list[torch.Tensor]:
    """The fixed model's outputs on the example inputs; FixFailure when it still fails (what breaks the forward
    was not fixed: `why` says which finding and why), since a fixed model must run."""
    try:
        return eval_outputs(model, inputs)
    except Exception as exc:  # noqa: BLE001
        reason = f" ({why})" if why else ""
        raise FixFailure(
            f"the fixed model still fails on the example inputs ({type(exc).__name__}: {first_line(exc)}); "
            f"nothing was written: fix what breaks the forward by hand{reason}"
        ) from exc


def outputs_match(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[bool, float]:
    """Whether two output lists agree (float tolerance relative to the output's scale), and the largest gap.
    Outputs on the meta device (a model without weights) agree when their shapes and dtypes do."""
    if len(a) != len(b):
        return False, float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False, float("inf")
        if x.is_meta or y.is_meta:
            if x.is_meta != y.is_meta:
                return False, float("inf")
            continue
        if not x.is_floating_point():
            if not torch.equal(x, y.to(x.device)):
                return False, float("inf")
            continue
        x64, y64 = x.double(), y.to(x.device).double()
        delta = float((x64 - y64).abs().max()) if x.numel() else 0.0
        scale = float(x64.abs().max()) if x.numel() else 0.0
        worst = max(worst, delta)
        if not torch.allclose(x64, y64, rtol=1e-4, atol=1e-5 * max(1.0, scale), equal_nan=True):
            return False, delta
    return True, worst
