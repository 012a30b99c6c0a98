"""`--fix` in place: the fixes of the rules written into the user's own files, as ruff writes its fixes.

The graph rewrite (`auditor.fixing`) fixes a copy of the model; this wing edits the source the model was built
from, at the lines the findings know (the line creating a module, the forward line calling it, the init call that
drew a weight), through LibCST, so formatting and comments stay. Layers, each importing only those below:

- `session.py` (the `audit` process): choose the planned edits, apply them per file, write, audit again, roll
  back what breaks a model, keeps a finding, or renames parameters beyond what the edit says; `--diff`.
- `planning.py`: each finding's `rule.source_fix(ctx, finding)`, in the model's child process (`context.py`,
  `EditContext`: the graph and the primitives, with `moves.py`, `inits.py` and `blocks.py` for RES001) or, for
  training scripts, in the `audit` process (`script.py`).
- `apply.py` (all of a file's operations in one pass), `source.py` (one parsed file and what edits ask of it),
  `change.py`, `ops.py` (the records), `files.py` (what may be edited, atomic writes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.sourcefix.context import EditContext
    from auditor.sourcefix.ops import SourceEdit
    from auditor.sourcefix.script import ScriptContext

__all__ = ["EditContext", "ScriptContext", "SourceEdit"]
