"""The user's files as a project: which local modules each file imports, whether it reaches torch, and whether
importing it (with the local modules its import runs) is safe. Each file is read and parsed once per run.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

from auditor.files import open_regular
from auditor.static.safety import Hazard, import_hazard, module_statements

# Packages that import torch themselves: a file importing one of them may build a model.
TORCH_PACKAGES = frozenset({
    "torch", "torchvision", "torchaudio", "torchtext", "timm", "transformers", "lightning", "pytorch_lightning",
    "lightning_fabric", "accelerate", "diffusers", "peft", "torch_geometric", "torchmetrics", "open_clip",
    "sentence_transformers", "ultralytics", "monai", "kornia", "fastai", "detectron2", "mmcv", "mmengine", "mmdet",
    "mmseg", "fairseq", "xformers", "flash_attn", "segmentation_models_pytorch", "torchrl", "pytorchvideo", "torchao",
})


def read_source(path: Path) -> str:
    """The text of a Python file as Python itself reads it: a PEP 263 coding line or a UTF-8 BOM decides. Only
    a regular file is read (OSError otherwise)."""
    with open_regular(path) as handle:
        data = io.BytesIO(handle.read())
    data.name = str(path)  # named in an unknown encoding's message, as tokenize.open names it
    encoding, _ = tokenize.detect_encoding(data.readline)
    data.seek(0)
    return io.TextIOWrapper(data, encoding, newline=None).read()


@dataclass
class FileFacts:
    """What one file's source says about importing it."""

    path: Path
    tree: ast.Module | None  # None when it cannot be read or parsed (its import will say why)
    imports_torch: bool = False
    local_imports: list[Path] = field(default_factory=list)  # the local files its import runs, in order

    @cached_property
    def hazard(self) -> Hazard | None:
        """Computed only for files that reach torch: a plain utility module never needs it."""
        return import_hazard(self.tree) if self.tree is not None else None


class Project:
    """One run's view of the user's files; facts are computed once per file."""

    def __init__(self) -> None:
        self._facts: dict[Path, FileFacts] = {}

    def facts(self, path: Path, tree: ast.Module | None = None) -> FileFacts:
        path = path.resolve()
        if path not in self._facts:
            self._facts[path] = _read_facts(path, tree)
        return self._facts[path]

    def known(self, path: Path) -> FileFacts | None:
        """The facts of a file already read this run (no reading here)."""
        return self._facts.get(path.resolve())

    def reaches_torch(self, path: Path) -> bool:
        """Whether the file imports torch (or a package built on it), itself or through its local imports."""
        return any(self.facts(p).imports_torch for p in self.closure(path))

    def import_blocker(self, path: Path) -> str | None:
        """Why importing the file is unsafe: its own top level, or that of a local module its import runs
        (its packages' `__init__.py` included); None when every one of them only declares things."""
        start = path.resolve()
        for dependency in self.closure(path):
            hazard = self.facts(dependency).hazard
            if hazard is not None:
                return str(hazard) if dependency == start else f"{hazard} of {_relative(dependency, start)}, which it imports"
        return None

    def closure(self, path: Path) -> list[Path]:
        """The file, then every local file its import runs (depth first, each once)."""
        order: list[Path] = []
        pending = [path.resolve()]
        while pending:
            current = pending.pop()
            if current in order:
                continue
            order.append(current)
            pending.extend(reversed(self.facts(current).local_imports))
        return order


def _read_facts(path: Path, tree: ast.Module | None) -> FileFacts:
    if tree is None:
        try:
            tree = ast.parse(read_source(path), filename=str(path))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            return FileFacts(path, None)
    facts = FileFacts(path, tree)
    roots = search_roots(path)
    for statement in module_statements(tree.body):
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                facts.imports_torch |= alias.name.split(".")[0] in TORCH_PACKAGES
                facts.local_imports.extend(local_module(alias.name.split("."), roots))
        elif isinstance(statement, ast.ImportFrom):
            module = (statement.module or "").split(".") if statement.module else []
            if statement.level == 0:
                facts.imports_torch |= module[0] in TORCH_PACKAGES
                bases = roots
            else:
                bases = [_package_folder(path, statement.level)]
            found = local_module(module, bases) if module else []
            for alias in statement.names:  # `from pkg import submodule`
                found.extend(local_module([*module, alias.name], bases, parents=False))
            facts.local_imports.extend(found)
    facts.local_imports = [p for p in dict.fromkeys(facts.local_imports) if p != path] + _package_inits(path)
    return facts


def module_file(importer: Path, parts: list[str], level: int = 0, roots: Sequence[Path] = ()) -> Path | None:
    """The user's own file that `import a.b` (`parts` a, b; level 0) or `from ..a import b` (level 2) names in
    `importer` (an absolute path): `a/b.py` or `a/b/__init__.py` next to it, at the top of its package or, for an
    absolute import, below one of `roots`; the package's `__init__.py` for `from .. import b`. None for an
    installed package."""
    if level:
        package = _package_folder(importer, level)
        if not parts:
            init = package / "__init__.py"
            return init.resolve() if init.is_file() else None
        bases = [package]
    elif parts:
        bases = list(dict.fromkeys([*search_roots(importer), *roots]))
    else:
        return None
    found = local_module(parts, bases)
    return found[-1] if found else None


def _package_folder(importer: Path, level: int) -> Path:
    """The folder a relative import with `level` leading dots starts from."""
    folder = importer.parent
    for _ in range(level - 1):
        folder = folder.parent
    return folder


def search_roots(path: Path) -> list[Path]:
    """Where `import x` finds the user's own modules: the file's folder and the top of its package."""
    roots = [path.parent]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        folder = folder.parent
    if folder not in roots:
        roots.append(folder)
    return roots


def local_module(parts: list[str], bases: list[Path], parents: bool = True) -> list[Path]:
    """The files `import a.b.c` runs below the first base that has them: a/__init__.py, a/b/__init__.py and
    a/b/c.py (or a/b/c/__init__.py). Empty for a module that is not the user's (an installed package)."""
    for base in bases:
        files: list[Path] = []
        folder = base
        for index, part in enumerate(parts):
            package, module = folder / part / "__init__.py", folder / f"{part}.py"
            last = index == len(parts) - 1
            if package.is_file():
                if parents or last:
                    files.append(package.resolve())
                folder = folder / part
            elif module.is_file() and last:
                files.append(module.resolve())
            else:
                files = []
                break
        if files:
            return files
    return []


def _package_inits(path: Path) -> list[Path]:
    """A file inside packages is imported under its dotted name, which runs every enclosing `__init__.py`."""
    inits = []
    folder = path.parent
    while (folder / "__init__.py").is_file():
        init = (folder / "__init__.py").resolve()
        if init != path:
            inits.append(init)
        folder = folder.parent
    return list(reversed(inits))


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.relative_to(start.parent))
    except ValueError:
        return str(path)
