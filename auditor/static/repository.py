"""The repository a target lives in: its root, its files, how its imports resolve, read once per run.

The root is the nearest folder above the target holding a project marker (`.git`, `pyproject.toml`, `setup.py`,
`setup.cfg`, `requirements.txt`); without one, the target's own folder. Scripts anywhere below it are read (never
run) for the calls that build and feed the target's models (`reader.py`), whether or not they are audited.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Callable

from auditor.files import read_text
from auditor.static.project import Project, module_file, read_source
from auditor.static.reader import RepositoryReader

MARKERS = (".git", "pyproject.toml", "setup.py", "setup.cfg", "requirements.txt")
MAX_FILES = 2000  # a root that is really a home folder or a monorepo: read this many, nearest first
_SKIPPED_FOLDERS = ("site-packages", "dist-packages", "__pypackages__", "node_modules", "__pycache__", "build", "dist", "venv", "env", "wandb", "outputs", "logs")


def find_root(path: Path) -> Path:
    """The repository folder of a file or folder (a folder it cannot look into has no marker)."""
    start = path.resolve()
    folder = start if _exists(start, Path.is_dir) else start.parent
    for candidate in (folder, *folder.parents):
        if any(_exists(candidate / marker) for marker in MARKERS):
            return candidate
        if candidate == Path.home() or candidate.parent == candidate:
            break
    return folder


def _exists(path: Path, test: Callable[[Path], bool] = Path.exists) -> bool:
    try:
        return test(path)
    except OSError:  # a folder without permission to look into
        return False


class Repository:
    """One repository's sources (Python files and notebooks' code), read lazily: a file is parsed and read only
    when it mentions a name being planned, or when a file being read imports it."""

    def __init__(self, root: Path, project: Project, files: list[Path] | None = None) -> None:
        self.root = root.resolve()
        self.project = project
        self.files = files if files is not None else repository_files(self.root)
        self.notebooks: dict[Path, object] = {}  # path -> auditor.static.notebooks.NotebookCode
        self._texts: dict[Path, str | None] = {}
        self._located: dict[tuple[Path, tuple[str, ...], int], Path | None] = {}
        self._asked: set[str] = set()
        self.reader = RepositoryReader(self.root, self._tree, locate=self.locate)

    def read_for(self, names: set[str]) -> None:
        """Read every file that mentions one of `names` (classes and factories to plan), once per name."""
        new = frozenset(n for n in names if n not in self._asked)
        if not new:
            return
        self._asked |= new
        pattern = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in sorted(new)) + r")\b")
        for path in self.files:
            text = self._text(path)
            if text is not None and pattern.search(text):
                self.reader.read(path, frozenset(self._asked))

    def _text(self, path: Path) -> str | None:
        if path not in self._texts:
            try:
                self._texts[path] = read_text(path) if path.stat().st_size < 2_000_000 else None
            except OSError:
                self._texts[path] = None
        return self._texts[path]

    def _tree(self, path: Path) -> ast.Module | None:
        if path.suffix == ".ipynb":
            from auditor.static.notebooks import NotebookUnreadable, read_notebook

            try:
                code = read_notebook(path)
                tree = code.tree
            except (NotebookUnreadable, SyntaxError):
                return None
            self.notebooks[path] = code
            return tree
        known = self.project.known(path)
        if known is not None:
            return known.tree
        try:
            return ast.parse(read_source(path), filename=str(path))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            return None

    def locate(self, importer: Path, parts: list[str], level: int) -> Path | None:
        """The local file `import a.b` (level 0) or `from ..a import b` (level 2) names, from `importer`, an
        absolute import also from the root (scripts run there); None when it is not one of the repository's files
        (an installed package). Asked once per folder."""
        key = (importer.parent, tuple(parts), level)
        if key not in self._located:
            found = module_file(importer, parts, level, roots=[self.root])
            self._located[key] = found if found is not None and _inside(found, self.root) else None
        return self._located[key]

    def label(self, path: Path | str) -> str:
        """How results name a file: relative to the working directory when inside it."""
        from auditor.locations import display_path

        return display_path(str(path))

    def where(self, path: Path | str, line: int) -> str:
        """`train.py:41` as people read it; a notebook's line as `nb.ipynb:cell 3:12`."""
        path = Path(path)
        notebook = self.notebooks.get(path)
        if notebook is not None:
            cell, local = notebook.cell_of(line)  # type: ignore[attr-defined]
            return f"{self.label(path)}:cell {cell}:{local}"
        return f"{self.label(path)}:{line}"


def repository_files(root: Path) -> list[Path]:
    """The Python files and notebooks below a root (regular files: never a FIFO so named), nearest first, without
    hidden, build and environment folders."""
    found: list[Path] = []
    for folder, folders, names in os.walk(root):
        folders[:] = sorted(f for f in folders if not (f.startswith(".") or f in _SKIPPED_FOLDERS or f.endswith(".egg-info")))
        found.extend(Path(folder, name) for name in sorted(names) if name.endswith((".py", ".ipynb")) and Path(folder, name).is_file())
        if len(found) > MAX_FILES * 2:
            break
    found.sort(key=lambda p: (len(p.relative_to(root).parts), str(p)))
    return found[:MAX_FILES]


def signature(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """What changes when any of the files does: their paths, sizes and modification times."""
    stamps = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        stamps.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
