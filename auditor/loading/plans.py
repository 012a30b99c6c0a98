"""A plan's values made real in the child that builds the model: the repository's classes imported, the calls
the plan recorded (`GPTConfig(n_layer=2)`, `Net()` for a backbone) made, config objects built with their
defaults. Runs inside the builder, so a module passed as an argument is built on meta with the model."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any, Callable

from auditor.errors import TargetError
from auditor.loading.arguments import config_for
from auditor.static.plan import Build
from auditor.static.values import ALLOWED_LIBRARY_PREFIXES, Call, DefaultConfig, Namespace, Ref

Importer = Callable[[Path], Any]  # a repository file -> its imported module


def call_planned(obj: Callable[..., Any], build: Build, overrides: dict[str, Any], importer: Importer) -> Any:
    """`obj(**build's arguments)`, with --kwargs taking precedence over what the plan chose."""
    args = [materialize(v, importer) for v in build.args]
    kwargs = {k: _argument(obj, k, v, importer) for k, v in build.kwargs if k not in overrides}
    kwargs.update(overrides)
    return obj(*args, **kwargs)


def _argument(owner: Callable[..., Any], name: str, value: Any, importer: Importer) -> Any:
    if isinstance(value, DefaultConfig):
        config = config_for(owner, name)
        if config is None:
            raise TargetError(f"needs constructor arguments: {name} (no config class to build it from)")
        return config
    return materialize(value, importer)


def materialize(value: Any, importer: Importer, depth: int = 0) -> Any:
    if depth > 30:
        raise TargetError("a planned argument nests too deeply")
    if isinstance(value, Ref):
        return _resolve(value, importer)
    if isinstance(value, Call):
        func = _resolve(value.func, importer)
        args = [materialize(v, importer, depth + 1) for v in value.args]
        kwargs = {k: _argument(func, k, v, importer) for k, v in value.kwargs}
        return func(*args, **kwargs)
    if isinstance(value, Namespace):
        return argparse.Namespace(**{k: materialize(v, importer, depth + 1) for k, v in value.values.items()})
    if isinstance(value, list):
        return [materialize(v, importer, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(materialize(v, importer, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: materialize(v, importer, depth + 1) for k, v in value.items()}
    return value


def _resolve(ref: Ref, importer: Importer) -> Any:
    if ref.path is not None:
        module = importer(Path(ref.path))
        if not hasattr(module, ref.name):
            raise TargetError(f"{ref.path}: no name {ref.name!r} after import")
        return getattr(module, ref.name)
    dotted = f"{ref.module}.{ref.name}"
    if not (dotted.startswith(ALLOWED_LIBRARY_PREFIXES) or ref.module == "torch"):
        raise TargetError(f"{dotted} is not something a plan may call")
    return getattr(importlib.import_module(ref.module or ""), ref.name)

