"""The Python API on live models: `auditor.audit(model, example_inputs)`.

The same engine as the CLI, on a model the caller built. The model is never moved or modified; its train/eval
state is restored after the capture. Failures raise `TargetError` instead of becoming error results.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

import torch.nn as nn

from auditor.engine import Engine
from auditor.errors import TargetError
from auditor.findings import Report
from auditor.loading.models import LoadedModel
from auditor.loading.sites import CreationSites
from auditor.options import Options
from auditor.rule import default_settings
from auditor.selection import Selection


def audit(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    probe: bool = False,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> Report:
    """Audit a live module. `example_inputs` is a tensor or a tuple of tensors; without it, inputs are
    resolved as on the command line (`example_input_array`, then inference from the first layer)."""
    options = api_options(select, ignore, settings, probe=probe)
    result = Engine(options).audit_loaded(live_model(model, example_inputs))
    if result.status != "ok":
        raise TargetError(result.error or "audit failed")
    return Report([result])


def api_options(select: Iterable[str] | None, ignore: Iterable[str] | None, settings: dict[str, Any] | None, **extra: Any) -> Options:
    merged = default_settings()
    merged.update(settings or {})
    return Options(selection=Selection(select=list(select or ["ALL"]), ignore=list(ignore or [])), settings=merged, **extra)


def live_model(model: nn.Module, example_inputs: Any) -> LoadedModel:
    """Wrap a caller's module; creation sites come from reading its classes' source."""
    if example_inputs is not None and not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    return LoadedModel(
        label=type(model).__name__,
        model=model,
        sites=CreationSites().for_model(model),
        namespace=sys.modules.get(type(model).__module__),
        owned=False,
        example_inputs=example_inputs,
    )
