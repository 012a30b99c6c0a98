"""`audit --fix`: rewrite a copy of the model, write it as a self-contained folder, load it back.

Layers, each importing only the ones below it (the engine calls `fixer`; nothing here imports the engine):

- `fixer.py`: one model's --fix: the loop, writing, loading the written folder back; the engine re-audits
  what it returns and hands the result to `FixOutcome.conclude` (`remaining.py`).
- `loop.py`: passes of fixes over one captured graph, the verification of output-preserving fixes, undoing.
- `save.py` (one folder's files, with `codegen.py` for model.py) and `writer.py` (the folder format, the manifest
  that marks it, the atomic `--out`); `verify.py`: running and comparing outputs.
- `context.py` (`FixContext`, what a rule's `fix` uses) over `plan.py` (`PlanContext`, the read-only
  preconditions a rule's `fix_plan` states and the audit's `fixable` flag comes from), `shortcut.py` (RES001),
  `concat.py` (RES004), `init.py`.
- `workspace.py` (the copy that shares the user's tensors until a fix writes one), `layout.py` (the user's
  module tree in the GraphModule), `modes.py` (`self.training` at run time), `rewrite.py` (fx edits + journal).

(The package is `fixing`, not `fix`: `auditor.fix` is the Python API function, and a subpackage of that name
would replace it as an attribute of `auditor` once imported.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auditor.fixing.context import FixContext
    from auditor.fixing.plan import PlanContext
    from auditor.fixing.rewrite import CannotFix, Stale

__all__ = ["FixContext", "PlanContext", "CannotFix", "Stale"]
_HOMES = {"FixContext": "context", "PlanContext": "plan", "CannotFix": "rewrite", "Stale": "rewrite"}


def __getattr__(name: str) -> Any:
    """Imported on first use: the command line reaches `fixing.writer` (which needs no torch) through here."""
    if name in _HOMES:
        return getattr(importlib.import_module(f"auditor.fixing.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
