"""Importing the user's code without running it as a script, and turning its failures into one clear line."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import linecache
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Iterator

from auditor.errors import TargetError, first_line
from auditor.files import read_text, unwritten_loader
from auditor.locations import display_path, first_user_site


def import_file(path: Path) -> ModuleType:
    """Import a .py file as a module (never as `__main__`, so `if __name__ == "__main__":` blocks stay idle).

    A file inside a package (folders with `__init__.py`) is imported under its dotted name so that its relative
    imports work; any other file under its stem, or a unique name if that stem is taken by another file.
    """
    path = path.resolve()
    root, dotted = _package_root(path)
    with _on_sys_path(root), _import_errors(path):
        if dotted != path.stem:
            return importlib.import_module(dotted)
        return _load_standalone(path)


@contextlib.contextmanager
def script_argv(program: Path | str) -> Iterator[None]:
    """`sys.argv` as a script run on its own would see it: just its file, so top-level argument parsing reads
    no audit options (and `parse_args()` with required options fails inside the import, as one clear error)."""
    saved = sys.argv
    sys.argv = [str(program)]
    try:
        yield
    finally:
        sys.argv = saved


def import_dotted(name: str) -> ModuleType:
    """Import `package.module` as `python -m` would see it from the working directory."""
    with _on_sys_path(Path.cwd()), _import_errors(None, name):
        return importlib.import_module(name)


def _load_standalone(path: Path) -> ModuleType:
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if getattr(existing, "__file__", None) and Path(existing.__file__).resolve() == path:
            return existing
        name = f"{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path, loader=unwritten_loader(name, path))
    if spec is None or spec.loader is None:
        raise TargetError(f"{display_path(str(path))}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    with _registered(name, module):
        spec.loader.exec_module(module)
    return module


def _package_root(path: Path) -> tuple[Path, str]:
    """The folder to put on sys.path and the dotted module name of `path` from there. A file that imports
    relatively from a folder without `__init__.py` (`models/convnext_isotropic.py`: `from .convnext import
    Block`) is imported as a module of namespace packages, as `python -m models.convnext_isotropic` would."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) == 1:
        for _ in range(_relative_depth(path)):
            if folder.parent == folder:
                break
            parts.insert(0, folder.name)
            folder = folder.parent
    return folder, ".".join(parts)


def _relative_depth(path: Path) -> int:
    """How many folders up the file's relative imports reach (`from ..a import b`: 2), from its text."""
    try:
        text = read_text(path)
    except OSError:
        return 0
    levels = [len(m.group(1)) for m in _RELATIVE_IMPORT.finditer(text)]
    return max(levels, default=0)


_RELATIVE_IMPORT = re.compile(r"^[ \t]*from[ \t]+(\.+)", re.MULTILINE)


def import_notebook(path: Path, code: str) -> ModuleType:
    """A notebook's declaring code (`auditor.static.notebooks`) as a module whose file is the notebook, so
    frames, creation sites and `inspect` point into it (lines of its joined code cells); its folder is on
    sys.path, as the notebook's kernel has it."""
    path = path.resolve()
    name = f"_auditor_notebook_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    existing = sys.modules.get(name)
    if existing is not None:
        return existing
    module = ModuleType(name)
    module.__file__ = str(path)
    linecache.cache[str(path)] = (len(code), None, code.splitlines(True), str(path))
    with _on_sys_path(path.parent), _import_errors(path), _registered(name, module):
        exec(compile(code, str(path), "exec"), module.__dict__)  # noqa: S102 - only the notebook's declarations
    return module


@contextlib.contextmanager
def _registered(name: str, module: ModuleType) -> Iterator[None]:
    """`module` in sys.modules as `name` while its code runs, as an import puts it there; taken out again when
    that code fails, so a later import runs it afresh rather than finding it half made."""
    sys.modules[name] = module
    try:
        yield
    except BaseException:
        sys.modules.pop(name, None)
        raise


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


@contextlib.contextmanager
def _import_errors(path: Path | None, name: str | None = None) -> Iterator[None]:
    """Syntax and import-time errors become a TargetError that names the file and line where they happened."""
    what = display_path(str(path)) if path is not None else name
    try:
        yield
    except SyntaxError as exc:
        where = f"{display_path(exc.filename)}:{exc.lineno}" if exc.filename else what
        raise TargetError(f"{where}: syntax error: {exc.msg}") from exc
    except ModuleNotFoundError as exc:
        if path is None and exc.name and name and name.startswith(exc.name):
            raise TargetError(f"{name}: no module named {exc.name!r}") from exc
        raise TargetError(f"{_where(exc, what)}: ModuleNotFoundError while importing: {first_line(exc)}") from exc
    except SystemExit as exc:
        raise TargetError(f"{what}: exited with {exc.code!r} while being imported") from exc
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises at import
        raise TargetError(f"{_where(exc, what)}: {type(exc).__name__} while importing: {first_line(exc)}") from exc


def error_site(exc: BaseException) -> str | None:
    """file:line of the innermost traceback frame outside torch and the tool, if any."""
    frames = [(f.filename, f.lineno or 0) for f in traceback.extract_tb(exc.__traceback__)]
    site = first_user_site(reversed(frames))
    return f"{site[0]}:{site[1]}" if site else None


def _where(exc: BaseException, fallback: str | None) -> str:
    return error_site(exc) or fallback or "?"
