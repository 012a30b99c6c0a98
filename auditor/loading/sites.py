"""Where each submodule was created: the user's line `self.drop = nn.Dropout(0.1)`.

Recorded while the tool imports the user's file and builds the model, by wrapping `nn.Module.__init__`: the
first frame outside torch that is not one of the instance's own `__init__` frames is the line that created it.
This is exact for factories, loops and `ModuleList.append`, where reading the source is not. For models built
elsewhere (the Python API), `static_site` reads the parent's `__init__` source instead.

The same wrapper keeps, for every instance of a user's class, the plain values its `__init__` ended with (its
arguments and locals: `inp`, `out`, `stride`): `--fix` in place writes a shortcut's arguments and condition in
those names (`CreationSites.init_locals`).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import sys
import textwrap
import weakref
from functools import lru_cache
from types import FrameType
from typing import Any, Iterator

import torch.nn as nn

from auditor.locations import display_path, user_frame

Site = tuple[str, int]


class CreationSites:
    """A record of construction sites, keyed by module instance while recording, then by qualified name."""

    def __init__(self) -> None:
        self._sites: weakref.WeakKeyDictionary[nn.Module, Site] = weakref.WeakKeyDictionary()
        self._frames: weakref.WeakKeyDictionary[nn.Module, FrameType] = weakref.WeakKeyDictionary()
        self._locals: weakref.WeakKeyDictionary[nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        original = nn.Module.__init__
        sites = self._sites

        def recording_init(module: nn.Module, *args: object, **kwargs: object) -> None:
            if module not in sites:
                site = user_frame(skip=lambda frame: frame.f_locals.get("self") is module, depth=2)
                if site is not None:
                    sites[module] = site
                if not type(module).__module__.startswith("torch."):
                    frame = _constructor_frame(module)
                    if frame is not None:
                        self._frames[module] = frame
            original(module, *args, **kwargs)

        nn.Module.__init__ = recording_init  # type: ignore[method-assign]
        try:
            yield
        finally:
            nn.Module.__init__ = original  # type: ignore[method-assign]
            for module, frame in list(self._frames.items()):  # the constructors have returned: keep their values
                self._locals[module] = {k: v for k, v in frame.f_locals.items() if _plain(v)}
            self._frames.clear()

    def for_model(self, model: nn.Module) -> dict[str, Site]:
        """Qualified name -> site for every submodule (shared ones under each of their names)."""
        found: dict[str, Site] = {}
        for name, module in model.named_modules(remove_duplicate=False):
            site = self._sites.get(module) or static_site(model, name)
            if site is not None:
                found[name] = site
        return found


    def init_locals(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        """Qualified name -> the plain values (numbers, strings, tuples of them) its constructor ended with, for
        every instance of a user's class."""
        return {name: dict(self._locals[module]) for name, module in model.named_modules() if module in self._locals}


def _constructor_frame(module: nn.Module) -> FrameType | None:
    """The outermost `__init__` frame of `module` running now (a subclass's, when it calls its base's)."""
    frame, found = sys._getframe(2), None
    while frame is not None:
        if frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is module:
            found = frame
        elif found is not None:
            break
        frame = frame.f_back
    return found


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, tuple) and all(isinstance(v, (bool, int, float)) for v in value)


def static_site(model: nn.Module, qualname: str) -> Site | None:
    """The `self.<attr> = ...` line in the parent's class that creates `qualname`; for an entry of a
    Sequential/ModuleList (or anything without such a line), the site of the nearest ancestor that has one."""
    if not qualname:
        return _class_site(type(model))
    parent_name, _, attr = qualname.rpartition(".")
    parent = model.get_submodule(parent_name)
    for cls in type(parent).__mro__:
        if cls.__module__.startswith("torch."):
            break
        assignments = _assignment_lines(cls).get(attr)
        if assignments:
            return _creating(assignments, type(model.get_submodule(qualname)))
    return static_site(model, parent_name)


def _creating(assignments: list[tuple[Site, str | None]], made: type) -> Site:
    """Of an attribute's assignments in source order, the one that made the live module: the last whose call
    names its class (`self.body = nn.Sequential(...)` for a Sequential), else the last one, which is the one
    that stands when `__init__` runs straight through (as the CLI, which watches the build, finds)."""
    names = {cls.__name__ for cls in made.__mro__}
    named = [site for site, called in assignments if called in names]
    return (named or [site for site, _ in assignments])[-1]


def _class_site(cls: type) -> Site | None:
    if cls.__module__.startswith("torch."):
        return None  # a bare torch container: its source says nothing about the user's model
    try:
        _, line = inspect.getsourcelines(cls)
        return display_path(inspect.getsourcefile(cls) or ""), line
    except (OSError, TypeError):
        return None


@lru_cache(maxsize=512)
def _assignment_lines(cls: type) -> dict[str, list[tuple[Site, str | None]]]:
    """attr -> every `self.attr = ...` / `self.attr: T = ...` in the class's `__init__`, in source order: its
    (file, line) and the name the assigned value calls (`Sequential` for `nn.Sequential(...)`), if any."""
    try:
        source_lines, first = inspect.getsourcelines(cls)
        filename = display_path(inspect.getsourcefile(cls) or "")
    except (OSError, TypeError):
        return {}
    try:
        tree = ast.parse(textwrap.dedent("".join(source_lines)))
    except SyntaxError:
        return {}
    found: dict[str, list[tuple[Site, str | None]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "__init__" and node.args.args:
            self_name = node.args.args[0].arg
            assignments = [stmt for stmt in ast.walk(node) if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and not _is_none(stmt.value)]
            for stmt in sorted(assignments, key=lambda stmt: (stmt.lineno, stmt.col_offset)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for target in targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == self_name:
                        found.setdefault(target.attr, []).append(((filename, first + stmt.lineno - 1), _called_name(stmt.value)))
    return found


def _called_name(value: ast.expr | None) -> str | None:
    if isinstance(value, ast.Call):
        func = value.func
        return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return None


def _is_none(value: ast.expr | None) -> bool:
    """`self.x = None` placeholders are not where the module is created."""
    return value is None or (isinstance(value, ast.Constant) and value.value is None)
