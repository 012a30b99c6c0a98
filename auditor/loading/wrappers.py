"""The user's model inside the wrappers training code puts around it.

`torch.compile` returns an `OptimizedModule` whose forward is dynamo's (fx cannot trace it, and export would
audit dynamo's graph instead); DistributedDataParallel and DataParallel hold the model as `.module` and prefix
every name with `module.`. The audit reads the model they wrap, names its modules as the user's code does, and
says which wrapper it looked through. (accelerate's mixed-precision forward is an instance attribute that enters
autocast: `auditor.capture.float32` makes such regions inert while capturing.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn as nn


class Unwrapped(NamedTuple):
    model: nn.Module
    note: str | None  # which wrappers were looked through, for the result's notes


def unwrap(model: nn.Module) -> Unwrapped:
    """The innermost user model: through `torch.compile`'s `_orig_mod` and the data-parallel wrappers' `.module`."""
    seen: list[str] = []
    for _ in range(8):  # compile(DDP(model)) and the like: a few layers at most
        inner = _wrapped(model)
        if inner is None:
            break
        seen.append(type(model).__name__)
        model = inner
    note = f"audited the model inside its {' and '.join(seen)} wrapper{'s' if len(seen) > 1 else ''}" if seen else None
    return Unwrapped(model, note)


def _wrapped(model: nn.Module) -> nn.Module | None:
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    inner = None
    if type(model).__name__ == "OptimizedModule" and type(model).__module__.startswith("torch._dynamo"):
        inner = getattr(model, "_orig_mod", None)
    elif isinstance(model, (DataParallel, DistributedDataParallel)):
        inner = model.module
    return inner if isinstance(inner, nn.Module) else None
