"""A Jupyter notebook's code as the tool reads it (with nbformat): its code cells joined into one source, line for
line, and the part of it that only declares things, which alone is ever run.

- Lines of IPython syntax (`%matplotlib inline`, `!pip install ...`, `%%time`) become blank lines; a cell that
  is a cell magic of another language (`%%bash`) or does not parse is left out whole.
- Declaring statements are kept: imports, functions and classes, and assignments that make no call and read
  only names kept before them (`EMB_DIM = 256`, `HID_DIM = EMB_DIM * 2`). Everything else (loading data,
  training, printing, `model = Seq2Seq(...)`) is blanked out; the repository reader still reads all of it for
  the values it gives the models (`enc = Encoder(INPUT_DIM, ENC_EMB_DIM, ...)`).
- Lines map back to cells: line 57 of the joined code is `nb.ipynb:cell 12:3` (cells counted from 1 among all
  cells, markdown included, as Jupyter and VS Code number them).
"""

from __future__ import annotations

import ast
import builtins
import bisect
import io
from dataclasses import dataclass, field
from pathlib import Path

from auditor.files import open_regular

NOTEBOOKS_EXTRA = "pip install nbformat  (or: pip install 'auditor[notebooks]')"
_FOREIGN_CELL_MAGICS = ("%%bash", "%%sh", "%%script", "%%html", "%%javascript", "%%js", "%%latex", "%%markdown",
                        "%%writefile", "%%svg", "%%perl", "%%ruby", "%%R", "%%capture", "%%file", "%%system")


class NotebookUnreadable(Exception):
    """The notebook cannot be read: nbformat is missing, or the file is not a notebook."""


@dataclass
class NotebookCode:
    """The joined code of a notebook's code cells, and where each cell starts in it."""

    path: Path
    source: str
    starts: list[int] = field(default_factory=list)  # first line (1-based) of each code cell in `source`
    cells: list[int] = field(default_factory=list)  # that cell's number in the notebook (1-based)
    skipped: list[str] = field(default_factory=list)  # cells left out, and why

    @property
    def tree(self) -> ast.Module:
        return ast.parse(self.source, filename=str(self.path))

    def cell_of(self, line: int) -> tuple[int, int]:
        """(cell number, line in that cell) of a line of the joined source."""
        index = max(0, bisect.bisect_right(self.starts, line) - 1)
        if not self.starts:
            return 1, line
        return self.cells[index], line - self.starts[index] + 1

    def declaring_source(self) -> str:
        """The joined source with every statement that does more than declare blanked out (same line numbers)."""
        lines = self.source.split("\n")
        kept = [" " * 0] * len(lines)
        defined = set(dir(builtins))
        for statement in self.tree.body:
            if _declares(statement, defined):
                defined.update(_bound_names(statement))
                for number in range(statement.lineno, (statement.end_lineno or statement.lineno) + 1):
                    kept[number - 1] = lines[number - 1]
                for decorator in getattr(statement, "decorator_list", []):
                    for number in range(decorator.lineno, statement.lineno):
                        kept[number - 1] = lines[number - 1]
        return "\n".join(kept)


def read_notebook(path: Path) -> NotebookCode:
    """The code of a notebook, read with nbformat."""
    try:
        import nbformat
    except ImportError:
        raise NotebookUnreadable(f"reading notebooks needs nbformat: {NOTEBOOKS_EXTRA}") from None
    try:
        with open_regular(path) as handle:  # never a FIFO so named
            notebook = nbformat.read(io.TextIOWrapper(handle, encoding="utf-8"), as_version=4)
    except Exception as exc:  # noqa: BLE001 - not JSON, not a notebook, an unknown version
        raise NotebookUnreadable(f"not a readable notebook: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    lines: list[str] = []
    code = NotebookCode(path, "")
    for number, cell in enumerate(notebook.cells, start=1):
        if cell.get("cell_type") != "code":
            continue
        text = _python_of(cell.get("source", ""))
        if text is None:
            code.skipped.append(f"cell {number}: a cell magic of another language")
            continue
        try:
            ast.parse(text)
        except SyntaxError as exc:
            code.skipped.append(f"cell {number}: syntax error at its line {exc.lineno}")
            continue
        code.starts.append(len(lines) + 1)
        code.cells.append(number)
        lines.extend(text.split("\n"))
        lines.append("")  # cells never run into each other
    code.source = "\n".join(lines)
    return code


def _python_of(source: str) -> str | None:
    """A cell's source with IPython-only lines blanked; None for a cell in another language."""
    stripped = source.lstrip()
    if stripped.startswith(_FOREIGN_CELL_MAGICS):
        return None
    lines = source.split("\n")
    for index, line in enumerate(lines):
        head = line.lstrip()
        if head.startswith(("%", "!")) or (head.endswith("?") and not head.startswith("#")):
            lines[index] = ""
    return "\n".join(lines)


def _declares(statement: ast.stmt, defined: set[str]) -> bool:
    if isinstance(statement, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
        value = statement.value
        makes_calls = any(isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)) for n in ast.walk(value))
        reads = {n.id for n in ast.walk(value) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        plain_targets = all(isinstance(n, (ast.Name, ast.Tuple, ast.List)) for n in targets)
        return not makes_calls and reads <= defined and plain_targets
    if isinstance(statement, ast.Try):  # an import guard
        blocks = [statement.body, *[h.body for h in statement.handlers], statement.orelse, statement.finalbody]
        return all(isinstance(s, (ast.Import, ast.ImportFrom, ast.Pass)) or (isinstance(s, ast.Assign) and _declares(s, defined | {"None"}))
                   for block in blocks for s in block)
    return False


def _bound_names(statement: ast.stmt) -> set[str]:
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {statement.name}
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in statement.names}
    return {n.id for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
