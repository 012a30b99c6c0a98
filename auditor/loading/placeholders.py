"""Importing a repository file whose top level imports a package that is not installed (`import wandb`,
`from sklearn.metrics import f1_score`, a notebook's `import spacy`) when its models may not need it.

The file is imported as it is first. Only when that fails because a package is not installed at all (not a
module missing from an installed package, not one of the repository's own modules) is the import tried again
with that package stood in for by a placeholder: its names are classes that can be subclassed, annotated with
and checked against, and that raise `MissingPackage` when called. An import guard that catches ImportError
(`try: import apex ... except ImportError:`) never meets a placeholder, since the first import succeeded. A
model whose construction or forward calls into a placeholder is not audited, and says which package it needs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, Callable, Iterator, TypeVar

from auditor.errors import MissingPackage, TargetError

MAX_PACKAGES = 12  # stood in for in one import
T = TypeVar("T")


class _PlaceholderType(type):
    """The class of a placeholder name: attributes are further placeholders, calls raise MissingPackage."""

    _auditor_package: str
    _auditor_path: str

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{cls._auditor_path}.{name}", cls._auditor_package)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if _IMPORTING:
            if len(args) == 1 and not kwargs and (inspect.isclass(args[0]) or inspect.isfunction(args[0])):
                return args[0]  # a decorator (`@BACKBONES.register_module()`): registering changes nothing here
            return placeholder(f"{cls._auditor_path}()", cls._auditor_package)
        raise MissingPackage(cls._auditor_package)

    def __getitem__(cls, item: Any) -> Any:  # `Space[int]` in an annotation
        return cls

    def __or__(cls, other: Any) -> Any:  # `Tokenizer | None`
        return cls

    __ror__ = __or__


def placeholder(path: str, package: str) -> type:
    return _PlaceholderType(path.rsplit(".", 1)[-1], (), {"_auditor_package": package, "_auditor_path": path, "__module__": package})


class _PlaceholderModule(ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # a package: `import x.y` comes back to the finder

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{self.__name__}.{name}", self.__name__.split(".")[0])


class _Finder(MetaPathFinder, Loader):
    """Serves the packages stood in for (and their submodules), after every real finder failed."""

    def __init__(self) -> None:
        self.packages: list[str] = []

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname.split(".")[0] in self.packages:
            return ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        return _PlaceholderModule(spec.name)

    def exec_module(self, module: ModuleType) -> None:
        return None


@contextlib.contextmanager
def missing_packages() -> Iterator[_Finder]:
    """While loading one target: placeholders for the packages `import_tolerating` stood in for; afterwards they
    leave `sys.modules` (the loaded code keeps the names it bound)."""
    finder = _Finder()
    sys.meta_path.append(finder)
    try:
        yield finder
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] in finder.packages]:
            if isinstance(sys.modules[name], _PlaceholderModule):
                del sys.modules[name]


_IMPORTING: list[bool] = []  # non-empty while a file's top level runs under `import_tolerating`


def import_tolerating(finder: _Finder, load: Callable[[], T], is_local: Callable[[str], bool]) -> T:
    """`load()`, again with a placeholder for each package it fails on because it is not installed."""
    while True:
        try:
            _IMPORTING.append(True)
            try:
                return load()
            finally:
                _IMPORTING.pop()
        except TargetError as exc:
            package = _not_installed(exc)
            if package is None or package in finder.packages or is_local(package) or len(finder.packages) >= MAX_PACKAGES:
                raise
            finder.packages.append(package)


def _not_installed(exc: BaseException) -> str | None:
    """The top-level package whose absence made an import fail, when no such package is installed."""
    current: BaseException | None = exc
    while current is not None and not isinstance(current, ModuleNotFoundError):
        current = current.__cause__ or current.__context__
    if current is None or not current.name or isinstance(current, MissingPackage):
        return None
    top = current.name.split(".")[0]
    try:
        installed = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        installed = True
    return None if installed or top in sys.builtin_module_names else top
