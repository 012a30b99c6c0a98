"""`audit --fix`: rewrite a copy of the model, write it as a self-contained folder, load it back and re-audit it.

- `context.FixContext`: what a rule's `fix(ctx, finding)` sees, with the rewrite primitives (`rewrite.py`),
  seeded re-inits (`init.py`) and residual shortcuts (`shortcut.py`).
- `run.py`: the rounds of fixes on a deep copy, the verification of output-preserving fixes, writing, loading
  the written folder, running it and re-auditing it.
- `codegen.py`: `model.py` from the rewritten torch.fx GraphModule (torch.nn constructors plus fx's forward).
- `writer.py`: the folder layout, the manifest, FIXES.md and the atomic `--out`.

(The package is `fixing`, not `fix`: `auditor.fix` is the Python API function, and a subpackage of that name
would replace it as an attribute of `auditor` once imported.)
"""

from auditor.fixing.context import CannotFix, FixContext, Stale

__all__ = ["FixContext", "CannotFix", "Stale"]
