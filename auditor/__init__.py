"""auditor: audit PyTorch models for missing or misplaced training tricks.

`audit(model, example_inputs)` and `fix(model, example_inputs)` are the Python API; the `audit` command is a
thin layer over the same engine. Importing this package does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auditor.api import FixResult
    from auditor.findings import Report


def audit(model: Any, example_inputs: Any = None, **options: Any) -> Report:
    """Audit a live `nn.Module`; see `auditor.api.audit`. (torch is imported on first call, not on import.)"""
    from auditor.api import audit as _audit

    return _audit(model, example_inputs, **options)


def fix(model: Any, example_inputs: Any = None, **options: Any) -> FixResult:
    """Fix a copy of a live `nn.Module` (as `audit --fix`); returns the fixed module and the report of what
    changed and what remains (`model, report = auditor.fix(net, x)`). See `auditor.api.fix`."""
    from auditor.api import fix as _fix

    return _fix(model, example_inputs, **options)
