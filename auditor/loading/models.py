"""From a target to built models: import, find the models in a file (the contract's rules), build them.

Everything the user's code constructs here runs under one `CreationSites` recording, so every submodule knows
the line that created it.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch.nn as nn

from auditor.errors import TargetError, first_line
from auditor.loading.importing import error_site, import_dotted, import_file
from auditor.loading.sites import CreationSites, Site
from auditor.locations import display_path
from auditor.source import FACTORY_NAMES
from auditor.targets import FIXED_MANIFEST, Kind, Target



@dataclass
class LoadedModel:
    """A built model and what the audit needs around it."""

    label: str  # how results name it: "models/net.py:Net"
    model: nn.Module
    sites: dict[str, Site]
    namespace: ModuleType | None = None  # the module it came from (where `example_inputs()` may live)
    inputs: list[str] = field(default_factory=list)  # input specs attached to the target (config, fixed folder)
    owned: bool = True  # built by the tool (may be moved to a device); False for a model handed to the API
    example_inputs: tuple[Any, ...] | None = None  # inputs handed to the API
    origin: dict[str, Any] | None = None  # how to build it again (--fix of untraceable models): file/module, name, kwargs


@dataclass
class _Candidate:
    name: str
    obj: Any
    build: Callable[[], nn.Module]


class ModelLoader:
    """Loads targets for one run; one recording of creation sites covers all of them."""

    def __init__(self, *, trust_pickle: bool = False) -> None:
        self.sites = CreationSites()
        self.trust_pickle = trust_pickle

    def load(self, target: Target) -> list[LoadedModel]:
        if target.kind is Kind.FILE:
            return self._load_file(target)
        if target.kind is Kind.FILE_MEMBER:
            assert target.path is not None and target.name is not None
            with self.sites.recording():
                namespace = import_file(target.path)
            return [self._load_member(namespace, target, f"{display_path(str(target.path))}:{target.name}")]
        if target.kind is Kind.MODULE_MEMBER:
            assert target.module is not None
            with self.sites.recording():
                namespace = import_dotted(target.module)
            return [self._load_member(namespace, target, target.text)]
        if target.kind is Kind.FIXED:
            return self._load_fixed(target)
        if target.kind is Kind.PICKLE:
            return [self._load_pickle(target)]
        raise TargetError(f"{target.text}: cannot be loaded as a model")

    # --- whole files ------------------------------------------------------------------------------------------
    def _load_file(self, target: Target) -> list[LoadedModel]:
        assert target.path is not None
        with self.sites.recording():
            namespace = import_file(target.path)
            candidates = [c for c in self._candidates(namespace, target.kwargs)]
            built = [(c, self._build(c, display_path(str(target.path)))) for c in candidates]
        label = display_path(str(target.path))
        kept = _drop_submodule_classes(built)
        return [
            LoadedModel(f"{label}:{c.name}", model, self.sites.for_model(model), namespace, list(target.inputs),
                        origin=_origin(namespace, c.name, {} if isinstance(c.obj, nn.Module) else _accepted(c.obj, target.kwargs)))
            for c, model in kept
        ]

    def _candidates(self, namespace: ModuleType, kwargs: dict[str, Any]) -> list[_Candidate]:
        """Instances, no-argument factories and no-argument Module classes defined in the file, in file order."""
        found: list[_Candidate] = []
        for name, obj in vars(namespace).items():
            if name.startswith("_"):
                continue
            if isinstance(obj, nn.Module):
                found.append(_Candidate(name, obj, lambda obj=obj: obj))
            elif getattr(obj, "__module__", None) != namespace.__name__:
                continue
            elif inspect.isclass(obj) and issubclass(obj, nn.Module) and not inspect.isabstract(obj):
                if not _missing_arguments(obj, kwargs):
                    found.append(_Candidate(name, obj, lambda obj=obj: obj(**_accepted(obj, kwargs))))
            elif inspect.isfunction(obj) and name in FACTORY_NAMES and not _missing_arguments(obj, kwargs):
                found.append(_Candidate(name, obj, lambda obj=obj: obj(**_accepted(obj, kwargs))))
        return found

    def _build(self, candidate: _Candidate, where: str) -> nn.Module:
        try:
            model = candidate.build()
        except Exception as exc:  # noqa: BLE001 - the user's constructor failed
            site = error_site(exc) or where
            raise TargetError(f"{site}: building {candidate.name} failed: {type(exc).__name__}: {first_line(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise TargetError(f"{where}:{candidate.name} returned {type(model).__name__}, not an nn.Module")
        return model

    # --- explicit members -------------------------------------------------------------------------------------
    def _load_member(self, namespace: ModuleType, target: Target, label: str) -> LoadedModel:
        name = target.name or ""
        if not hasattr(namespace, name):
            available = [n for n, o in vars(namespace).items() if _is_model_like(o, namespace) and not n.startswith("_")]
            hint = f" (models here: {', '.join(available)})" if available else ""
            raise TargetError(f"{label}: no name {name!r} in {namespace.__name__}{hint}")
        obj = getattr(namespace, name)
        if isinstance(obj, nn.Module):
            if target.kwargs:
                raise TargetError(f"{label}: {name} is an instance; --kwargs only applies to classes and factories")
            candidate = _Candidate(name, obj, lambda: obj)
        elif callable(obj):
            missing = _missing_arguments(obj, target.kwargs)
            if missing:
                example = json.dumps({m: "..." for m in missing})
                raise TargetError(f"{label}: {name}() needs arguments {', '.join(missing)}; pass them with --kwargs '{example}'")
            unknown = _unknown_arguments(obj, target.kwargs)
            if unknown:
                raise TargetError(f"{label}: {name}() takes no argument {', '.join(unknown)}")
            candidate = _Candidate(name, obj, lambda: obj(**target.kwargs))
        else:
            raise TargetError(f"{label}: {name} is a {type(obj).__name__}, not a model, class or factory")
        with self.sites.recording():
            model = self._build(candidate, label.rsplit(":", 1)[0])
        return LoadedModel(label, model, self.sites.for_model(model), namespace, list(target.inputs),
                           origin=_origin(namespace, name, dict(target.kwargs), by_file=target.kind is Kind.FILE_MEMBER))

    # --- saved models -----------------------------------------------------------------------------------------
    def _load_fixed(self, target: Target) -> list[LoadedModel]:
        """A folder written by `--fix`: its manifest names the module and factory (one model), or lists the
        model folders inside it (several). Inputs: --input, else the manifest's, else the folder's
        `example_inputs()` (the inputs the audit used)."""
        assert target.path is not None
        where = display_path(str(target.path))
        try:
            manifest = json.loads((target.path / FIXED_MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TargetError(f"{where}: unreadable {FIXED_MANIFEST}: {first_line(exc)}") from exc
        if "models" in manifest:
            return [m for name in manifest["models"]
                    for m in self._load_fixed(Target(Kind.FIXED, str(target.path / name), path=target.path / name, inputs=list(target.inputs)))]
        if not isinstance(manifest, dict) or "module" not in manifest or "factory" not in manifest:
            raise TargetError(f"{where}: {FIXED_MANIFEST} names no module and factory")
        member = Target(Kind.FILE_MEMBER, target.text, path=target.path / manifest["module"], name=manifest["factory"],
                        inputs=list(target.inputs) or list(manifest.get("inputs", [])))
        loaded = self.load(member)[0]
        loaded.label = where
        return [loaded]

    def _load_pickle(self, target: Target) -> LoadedModel:
        assert target.path is not None
        where = display_path(str(target.path))
        if not self.trust_pickle:
            raise TargetError(
                f"{where}: refusing to unpickle: loading a pickle runs any code it contains; "
                "pass --trust-pickle if you trust its source, or audit the code that builds the model (model.py:Net)"
            )
        import torch

        try:
            with self.sites.recording():
                obj = torch.load(target.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise TargetError(f"{where}: cannot be loaded: {type(exc).__name__}: {first_line(exc)}") from exc
        if isinstance(obj, dict):
            raise TargetError(f"{where}: holds a state_dict (weights only), not a model; audit the code that builds the model and loads it")
        if not isinstance(obj, nn.Module):
            raise TargetError(f"{where}: holds a {type(obj).__name__}, not an nn.Module")
        return LoadedModel(where, obj, self.sites.for_model(obj), None, list(target.inputs))


def _origin(namespace: ModuleType, name: str, kwargs: dict[str, Any], by_file: bool = True) -> dict[str, Any]:
    """Where a model comes from, for a fixed folder that must build it again from the user's code: its file
    (a path target), else its importable module (`package.module:NAME`)."""
    path = getattr(namespace, "__file__", None) if by_file else None
    return {"file": str(Path(path).resolve()) if path else None, "module": namespace.__name__, "name": name, "kwargs": kwargs}


def _drop_submodule_classes(built: list[tuple[_Candidate, nn.Module]]) -> list[tuple[_Candidate, nn.Module]]:
    """A class candidate used inside another candidate, or already built by an instance or factory, is not
    audited on its own."""
    inner_types: set[type] = set()
    root_types: set[type] = set()
    for candidate, model in built:
        if not inspect.isclass(candidate.obj):
            root_types.add(type(model))
        inner_types.update(type(m) for name, m in model.named_modules() if name)
    kept = []
    for candidate, model in built:
        if inspect.isclass(candidate.obj) and (candidate.obj in inner_types or candidate.obj in root_types):
            continue
        kept.append((candidate, model))
    return kept


def _is_model_like(obj: Any, namespace: ModuleType) -> bool:
    if isinstance(obj, nn.Module):
        return True
    if getattr(obj, "__module__", None) != namespace.__name__:
        return False
    return (inspect.isclass(obj) and issubclass(obj, nn.Module)) or inspect.isfunction(obj)


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _missing_arguments(fn: Callable[..., Any], kwargs: dict[str, Any]) -> list[str]:
    return [p.name for p in _parameters(fn) if p.default is p.empty and p.name not in kwargs]


def _unknown_arguments(fn: Callable[..., Any], kwargs: dict[str, Any]) -> list[str]:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return []
    return [k for k in kwargs if k not in parameters]


def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of --kwargs a discovered candidate takes."""
    names = {p.name for p in _parameters(fn)}
    return {k: v for k, v in kwargs.items() if k in names}
