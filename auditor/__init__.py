"""auditor: audit PyTorch models for missing or misplaced training tricks.

`audit(model, example_inputs)` and `fix(model, example_inputs)` are the Python API; the `audit` command is a
thin layer over the same engine. Importing this package does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
