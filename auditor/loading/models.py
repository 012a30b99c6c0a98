"""From a target to built models: import, find the models in a file (the contract's rules), build them.

Everything the user's code constructs here runs under one `CreationSites` recording, so every submodule knows
the line that created it. A whole file yields its models, and a `Skipped` record for every candidate it does not
audit (it needs constructor arguments, it is a loss or a parameter-free helper), so none passes unseen.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Union

import torch.nn as nn

from auditor.errors import TargetError, first_line
from auditor.loading.arguments import accepted, call_with, describe_arguments, kwargs_template, missing_arguments, unknown_arguments
from auditor.loading.importing import error_site, import_dotted, import_file, script_argv
from auditor.loading.meta import MetaBuilder, WeightPolicy, Weights
from auditor.loading.sites import CreationSites, Site
from auditor.loading.wrappers import unwrap
from auditor.locations import display_path
from auditor.specs import CallHint
from auditor.static.outline import FACTORY_NAMES, Outline
from auditor.static.project import read_source
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
    origin: dict[str, Any] | None = None  # how to build it again (--fix of untraceable models): file/module or config, name, kwargs
    weights: Weights = field(default_factory=Weights)  # real or meta, its size and budget (loading/meta.py)
    notes: list[str] = field(default_factory=list)  # said about the model itself (a wrapper looked through)
    call: CallHint | None = None  # the repository's own call of the model, read statically (input guesses start there)


@dataclass
class Skipped:
    """A model candidate found but not audited, why, and the command that audits it."""

    label: str
    reason: str


@dataclass
class BuildFailure:
    """A discovered candidate whose constructor failed: an error of that candidate alone."""

    label: str
    error: TargetError


Loaded = Union[LoadedModel, Skipped, BuildFailure]


@dataclass
class _Candidate:
    name: str
    obj: Any
    build: Callable[[], nn.Module]


class ModelLoader:
    """Loads targets for one run; one recording of creation sites covers all of them."""

    def __init__(self, *, trust_pickle: bool = False, weights: WeightPolicy | None = None, progress: Callable[[str], None] | None = None) -> None:
        self.sites = CreationSites()
        self.trust_pickle = trust_pickle
        self.builder = MetaBuilder(weights or WeightPolicy())
        self.progress = progress or (lambda _: None)  # told "importing", "building NAME", "loading"

    def load(self, target: Target) -> list[Loaded]:
        """The target's models, each with its `Weights` (built on meta when they would not fit the budget); for a
        whole file also its skipped candidates and failed builds, in file order. While the user's code runs,
        `sys.argv` holds only its file, so its argument parsing sees no audit options."""
        with script_argv(target.path if target.path is not None else target.module or target.text):
            loaded = self._load(target)
        for item in loaded:
            if isinstance(item, LoadedModel):
                item.weights = self.builder.weights_of(item.model)
                inner, note = unwrap(item.model)
                if note is not None:
                    item.model, item.sites = inner, self.sites.for_model(inner)
                    item.notes.append(note)
        return loaded

    def _load(self, target: Target) -> list[Loaded]:
        if target.kind is Kind.FILE:
            return self._load_file(target)
        if target.kind is Kind.FILE_MEMBER:
            assert target.path is not None and target.name is not None
            self.progress("importing")
            with self.sites.recording():
                namespace = import_file(target.path)
            return [self._load_member(namespace, target, f"{display_path(str(target.path))}:{target.name}")]
        if target.kind is Kind.MODULE_MEMBER:
            assert target.module is not None
            self.progress("importing")
            with self.sites.recording():
                namespace = import_dotted(target.module)
            return [self._load_member(namespace, target, target.text)]
        if target.kind is Kind.FIXED:
            return self._load_fixed(target)
        if target.kind is Kind.PICKLE:
            return [self._load_pickle(target)]
        if target.kind is Kind.CONFIG:
            return [self._load_config(target)]
        raise TargetError(f"{target.text}: cannot be loaded as a model")

    # --- whole files ------------------------------------------------------------------------------------------
    def _load_file(self, target: Target) -> list[Loaded]:
        assert target.path is not None
        where = display_path(str(target.path))
        outline = _outline(target.path)
        self.progress("importing")
        with self.sites.recording():
            namespace = import_file(target.path)
            found = _discover(namespace, outline, target.kwargs, where)
            built: list[tuple[_Candidate, nn.Module]] = []
            results: dict[str, Loaded] = {}
            for item in found:
                if isinstance(item, Skipped):
                    results[item.label] = item
                    continue
                try:
                    built.append((item, self._build(item, where)))
                except TargetError as exc:
                    results[f"{where}:{item.name}"] = BuildFailure(f"{where}:{item.name}", exc)
        covered = _types_inside(built)
        for candidate, model in built:
            label = f"{where}:{candidate.name}"
            if inspect.isclass(candidate.obj) and candidate.obj in covered:
                continue  # audited as part of another model of the file
            kwargs = {} if isinstance(candidate.obj, nn.Module) else accepted(candidate.obj, target.kwargs)
            results[label] = _helper(model, label) or LoadedModel(
                label, model, self.sites.for_model(model), namespace, list(target.inputs), origin=_origin(namespace, candidate.name, kwargs))
        order = [f"{where}:{item.name}" if isinstance(item, _Candidate) else item.label for item in found]
        return [results[label] for label in order if label in results and not _covered_skip(results[label], namespace, covered, where)]

    def _build(self, candidate: _Candidate, where: str) -> nn.Module:
        self.progress(f"building {candidate.name}")
        try:
            model = self.builder.build(candidate.build)
        except TargetError:
            raise
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
            missing = missing_arguments(obj, target.kwargs)
            if missing:
                raise TargetError(f"{label}: {name}() needs arguments {describe_arguments(obj, missing)}; pass them with "
                                  f"--kwargs '{kwargs_template(obj, missing)}'")
            unknown = unknown_arguments(obj, target.kwargs)
            if unknown:
                raise TargetError(f"{label}: {name}() takes no argument {', '.join(unknown)}")
            candidate = _Candidate(name, obj, lambda: call_with(obj, target.kwargs))
        else:
            raise TargetError(f"{label}: {name} is a {type(obj).__name__}, not a model, class or factory")
        with self.sites.recording():
            model = self._build(candidate, label.rsplit(":", 1)[0])
        return LoadedModel(label, model, self.sites.for_model(model), namespace, list(target.inputs),
                           origin=_origin(namespace, name, dict(target.kwargs), by_file=target.kind is Kind.FILE_MEMBER))

    # --- saved models -----------------------------------------------------------------------------------------
    def _load_fixed(self, target: Target, inside: bool = False) -> list[LoadedModel]:
        """A folder written by `--fix`: its manifest names the module and factory (one model), or lists the
        model folders inside it (several, `inside` each of which is one model). Inputs: --input, else the
        manifest's, else the folder's `example_inputs()` (the inputs the audit used). A manifest that says
        anything else is this target's error."""
        assert target.path is not None
        where = display_path(str(target.path))
        try:
            manifest = json.loads((target.path / FIXED_MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TargetError(f"{where}: unreadable {FIXED_MANIFEST}: {first_line(exc)}") from exc
        if not isinstance(manifest, dict):
            raise TargetError(f"{where}: malformed {FIXED_MANIFEST}: not a JSON object")
        if "models" in manifest and not inside:
            models = manifest["models"]
            if not isinstance(models, list) or not all(isinstance(m, str) and _inside(m) for m in models):
                raise TargetError(f"{where}: malformed {FIXED_MANIFEST}: 'models' must name folders inside it")
            return [m for name in models
                    for m in self._load_fixed(Target(Kind.FIXED, str(target.path / name), path=target.path / name, inputs=list(target.inputs)), inside=True)]
        module, factory, inputs = manifest.get("module"), manifest.get("factory"), manifest.get("inputs", [])
        if not (isinstance(module, str) and _inside(module) and isinstance(factory, str) and factory.isidentifier()):
            raise TargetError(f"{where}: {FIXED_MANIFEST} names no module of the folder and factory")
        if not (isinstance(inputs, list) and all(isinstance(spec, str) for spec in inputs)):
            raise TargetError(f"{where}: malformed {FIXED_MANIFEST}: 'inputs' must be a list of input specs")
        member = Target(Kind.FILE_MEMBER, target.text, path=target.path / module, name=factory, inputs=list(target.inputs) or inputs)
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

        self.progress("loading")
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

    def _load_config(self, target: Target) -> LoadedModel:
        """A Hugging Face config.json: the architecture it describes (`auditor.loading.hf_config`)."""
        from auditor.loading.hf_config import config_factory

        assert target.path is not None
        where = display_path(str(target.path))
        name, build = config_factory(target.path, target.kwargs)
        with self.sites.recording():
            model = self._build(_Candidate(name, None, build), where)
        origin = {"config": str(target.path.resolve()), "name": name, "kwargs": dict(target.kwargs)}
        return LoadedModel(where, model, self.sites.for_model(model), None, list(target.inputs), origin=origin)


def _inside(name: str) -> bool:
    """Whether a name in a manifest is an entry of its folder: not the folder itself (`.`), not above it, no path."""
    return name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def _origin(namespace: ModuleType, name: str, kwargs: dict[str, Any], by_file: bool = True) -> dict[str, Any]:
    """Where a model comes from, for a fixed folder that must build it again from the user's code: its file
    (a path target), else its importable module (`package.module:NAME`)."""
    path = getattr(namespace, "__file__", None) if by_file else None
    return {"file": str(Path(path).resolve()) if path else None, "module": namespace.__name__, "name": name, "kwargs": kwargs}


def _outline(path: Path) -> Outline | None:
    """The file's declarations, read from its source (factories and building blocks are not visible on the
    imported objects alone)."""
    import ast

    try:
        return Outline(ast.parse(read_source(path), filename=str(path)))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None  # the import reports it


def _discover(namespace: ModuleType, outline: Outline | None, kwargs: dict[str, Any], where: str) -> list[_Candidate | Skipped]:
    """Candidates in file order: module-level instances, factories (functions returning a model, whatever
    their name) and nn.Module classes defined here; those that need arguments become `Skipped`. Building
    blocks (used inside another model class or factory of the file) are no candidates of their own."""
    blocks = outline.building_blocks() if outline is not None else set()
    found: list[_Candidate | Skipped] = []
    for name, obj in vars(namespace).items():
        if name.startswith("_"):
            continue
        if isinstance(obj, nn.Module):
            found.append(_Candidate(name, obj, lambda obj=obj: obj))
        elif getattr(obj, "__module__", None) != namespace.__name__:
            continue
        elif inspect.isclass(obj) and issubclass(obj, nn.Module) and not inspect.isabstract(obj):
            if name not in blocks:
                found.append(_buildable(name, obj, kwargs, where))
        elif inspect.isfunction(obj) and name not in blocks and _is_factory(name, obj, outline, namespace):
            missing = missing_arguments(obj, kwargs)
            if not missing or name in FACTORY_NAMES:
                found.append(_buildable(name, obj, kwargs, where))
    return found


def _buildable(name: str, obj: Callable[..., Any], kwargs: dict[str, Any], where: str) -> _Candidate | Skipped:
    missing = missing_arguments(obj, kwargs)
    if not missing:
        return _Candidate(name, obj, lambda: call_with(obj, accepted(obj, kwargs)))
    what = "a loss function, not a model" if _is_loss(obj) else f"needs constructor arguments: {describe_arguments(obj, missing)}"
    return Skipped(f"{where}:{name}", f"{what}; audit it with `audit {where}:{name} --kwargs '{kwargs_template(obj, missing)}'`")


def _is_factory(name: str, fn: Callable[..., Any], outline: Outline | None, namespace: ModuleType) -> bool:
    """Named like a factory, or returning a model: a call of an nn.Module class (of this file or imported),
    or annotated to return one."""
    if name in FACTORY_NAMES or (outline is not None and outline.returns_model(name)):
        return True
    definition = outline.functions.get(name) if outline is not None else None
    named = [*definition.returns, *([definition.annotation] if definition.annotation else [])] if definition else []
    return any(_is_module_class(_resolve(dotted, namespace)) for dotted in named)


def _resolve(dotted: str, namespace: ModuleType) -> Any:
    """A dotted name as the module sees it (`nn.Sequential`, `ResNet`, `models.resnet.ResNet`)."""
    parts = dotted.split(".")
    value: Any = vars(namespace).get(parts[0])
    if value is None:  # the outline resolved an import alias (`torch.nn.Sequential`): start from sys.modules
        import sys

        value = sys.modules.get(parts[0])
    for part in parts[1:]:
        value = getattr(value, part, None)
    return value


def _is_module_class(obj: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, nn.Module)


def _is_loss(obj: Any) -> bool:
    cls = obj if inspect.isclass(obj) else type(obj)
    return issubclass(cls, nn.modules.loss._Loss) or any(c.__name__.endswith("Loss") for c in cls.__mro__)


def _helper(model: nn.Module, label: str) -> Skipped | None:
    """Losses and parameter-free modules (activations, shuffles) are not models of their own."""
    if _is_loss(model):
        return Skipped(label, f"a loss function ({type(model).__name__}), not a model; `audit {label}` audits it anyway")
    if next(model.parameters(), None) is None:
        return Skipped(label, f"has no parameters ({type(model).__name__}: an activation or helper), not audited on its own; "
                              f"`audit {label} --input SPEC` audits it")
    return None


def _types_inside(built: list[tuple[_Candidate, nn.Module]]) -> set[type]:
    """Classes whose instances appear inside a built model, or are built by an instance or factory: such a class
    is audited as part of them, not on its own."""
    inside: set[type] = set()
    for candidate, model in built:
        if not inspect.isclass(candidate.obj):
            inside.add(type(model))
        inside.update(type(m) for name, m in model.named_modules() if name)
    return inside


def _covered_skip(item: Loaded, namespace: ModuleType, covered: set[type], where: str) -> bool:
    """A class skipped for its arguments that a factory or another model builds anyway (kuangliu's `ResNet`,
    built by `ResNet18()`) is audited there: no skipped record for it."""
    if not isinstance(item, Skipped):
        return False
    obj = vars(namespace).get(item.label[len(where) + 1:])
    return inspect.isclass(obj) and obj in covered


def _is_model_like(obj: Any, namespace: ModuleType) -> bool:
    if isinstance(obj, nn.Module):
        return True
    if getattr(obj, "__module__", None) != namespace.__name__:
        return False
    return (inspect.isclass(obj) and issubclass(obj, nn.Module)) or inspect.isfunction(obj)
