"""From a target to built models: import, find the models in a file (the contract's rules), build them.

Everything the user's code constructs here runs under one `CreationSites` recording, so every submodule knows
the line that created it. A whole file yields its models, and a `Skipped` record for every candidate it does not
audit (it needs constructor arguments, it is a loss or a parameter-free helper), so none passes unseen.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Collection, Union

import torch.nn as nn

from auditor.errors import TargetError, first_line, missing_package
from auditor.findings import ClassRecord
from auditor.loading import discovery
from auditor.loading.arguments import call_with, convert, describe_arguments, kwargs_template, missing_arguments, unknown_arguments
from auditor.loading.importing import error_site, import_dotted, import_file, import_notebook, script_argv
from auditor.loading.meta import MetaBuilder, WeightPolicy, Weights
from auditor.loading.placeholders import import_tolerating, missing_packages
from auditor.loading.plans import call_planned
from auditor.loading.sites import CreationSites, Site
from auditor.loading.wrappers import unwrap
from auditor.locations import display_path
from auditor.manifest import FIXED_MANIFEST, model_entry
from auditor.specs import CallHint
from auditor.static.plan import ClassPlan, FilePlan
from auditor.targets import Kind, Target


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
    notes: list[str] = field(default_factory=list)  # said about the model itself (a wrapper looked through, packages stood in for)
    built: str | None = None  # how its arguments were chosen: "built as in train.py:41", "built with guessed arguments: ..."
    classes: list[ClassRecord] = field(default_factory=list)  # the user classes it holds, its own first
    model_class: ClassRecord | None = None  # its own class, when the user's
    file_plan: FilePlan | None = None  # the plan of its file (a notebook's lines map to cells through it)
    call: CallHint | None = None  # the repository's own call of the model, read statically (input guesses start there)


@dataclass
class Skipped:
    """A model candidate found but not audited, why, and the command that audits it."""

    label: str
    reason: str
    model_class: ClassRecord | None = None  # the user class it stands for


@dataclass
class BuildFailure:
    """A discovered candidate whose constructor failed: an error of that candidate alone."""

    label: str
    error: TargetError
    model_class: ClassRecord | None = None


Loaded = Union[LoadedModel, Skipped, BuildFailure]


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
            plan = target.plan if target.plan is not None or target.path.suffix != ".ipynb" else plan_alone(target.path)
            with self.sites.recording(), missing_packages() as finder:
                importer = RepositoryImporter(target.path, plan, finder)
                namespace = importer.target()
                return [self._load_member(namespace, target, f"{display_path(str(target.path))}:{target.name}", importer)]
        if target.kind is Kind.MODULE_MEMBER:
            assert target.module is not None
            self.progress("importing")
            with self.sites.recording():
                namespace = import_dotted(target.module)
            return [self._load_member(namespace, target, target.text, None)]
        if target.kind is Kind.FIXED:
            return self._load_fixed(target)
        if target.kind is Kind.PICKLE:
            return [self._load_pickle(target)]
        if target.kind is Kind.CONFIG:
            return [self._load_config(target)]
        raise TargetError(f"{target.text}: cannot be loaded as a model")

    # --- whole files ------------------------------------------------------------------------------------------
    def _load_file(self, target: Target) -> list[Loaded]:
        """Every model of a file, built as its plan says, and every nn.Module class of the file accounted for
        (`auditor.loading.discovery`)."""
        assert target.path is not None
        where = display_path(str(target.path))
        plan = target.plan if target.plan is not None else plan_alone(target.path)
        self.progress("importing")
        with self.sites.recording(), missing_packages() as finder:
            importer = RepositoryImporter(target.path, plan, finder)
            try:
                namespace = importer.target()
            except TargetError as exc:
                return [BuildFailure(where, exc), *_unimported(plan, where, exc)]
            found, blocks = discovery.candidates(namespace, plan, target.kwargs, where, importer)
            results = self._build_all(found, where, plan, namespace)
            for cls in blocks:  # building blocks no model of the file covered
                if any(cls in _types_of(r) for r in results if isinstance(r, LoadedModel)):
                    continue
                local, entry = discovery.block_plan(cls, plan, where)
                if local:
                    results += self._build_all([discovery.planned(cls.__name__, cls, entry, target.kwargs, where, importer)], where, plan, namespace)
                else:
                    users = ", ".join(entry.users) if entry is not None else "another model"
                    results.append(Skipped(f"{where}:{cls.__name__}", f"part of {users}, which was not audited; "
                                           + discovery.needs_arguments(cls, cls.__name__, missing_arguments(cls, {}), where).split("; ", 1)[-1],
                                           discovery.class_record(cls, plan)))
        kept = [r for r in results if not _covered(r, namespace, results)]
        if importer.missing:
            note = f"imported without {', '.join(importer.missing)} (not installed; building this model did not need it)"
            for item in kept:
                if isinstance(item, LoadedModel):
                    item.notes.append(note)
        return kept + _unaccounted(namespace, plan, where, kept)

    def _build_all(self, found: list[discovery.Candidate | discovery.Skip], where: str, plan: FilePlan | None, namespace: ModuleType) -> list[Loaded]:
        results: list[Loaded] = []
        for item in found:
            label = f"{where}:{item.name}"
            if isinstance(item, discovery.Skip):
                results.append(Skipped(label, item.reason, discovery.class_record(item.cls, plan) if item.cls else None))
                continue
            record = discovery.class_record(item.obj, plan) if inspect.isclass(item.obj) else None
            try:
                model = self._build(item, where)
            except TargetError as exc:
                refusal = discovery.refused(exc)
                if missing_package(exc) is not None:
                    results.append(Skipped(label, f"not audited: building it {missing_package(exc)}", record))
                elif refusal is not None:  # the guard stopped what its constructor did: not audited, not failed
                    results.append(Skipped(label, f"not audited: its constructor was refused ({refusal}); "
                                                  f"`audit {where}:{item.name}` builds it on purpose", record))
                elif item.soft:  # guessed arguments, or defaults of None, that do not build: it needs real ones
                    results.append(Skipped(label, discovery.failed_guess(item, exc, where), record))
                else:
                    results.append(BuildFailure(label, exc, record))
                continue
            skipped = _helper(model, label, item.plan)
            if skipped is not None:
                skipped.model_class = discovery.class_record(type(model), plan)
                results.append(skipped)
                continue
            origin = _origin(namespace, item.name, item.origin_kwargs) if item.origin_kwargs is not None else None
            results.append(LoadedModel(
                label, model, self.sites.for_model(model), namespace, origin=origin, built=item.built,
                classes=discovery.user_classes(model, plan), model_class=discovery.class_record(type(model), plan),
                call=item.plan.call if item.plan is not None else _instance_call(model, plan), file_plan=plan))
        return results

    def _build(self, candidate: discovery.Candidate, where: str) -> nn.Module:
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
    def _load_member(self, namespace: ModuleType, target: Target, label: str, importer: RepositoryImporter | None) -> LoadedModel:
        name = target.name or ""
        if not hasattr(namespace, name):
            available = [n for n, o in vars(namespace).items() if _is_model_like(o, namespace) and not n.startswith("_")]
            hint = f" (models here: {', '.join(available)})" if available else ""
            raise TargetError(f"{label}: no name {name!r} in {namespace.__name__}{hint}")
        obj = getattr(namespace, name)
        entry = target.plan.plan_for(name) if target.plan is not None else None
        built = None
        if isinstance(obj, nn.Module):
            if target.kwargs:
                raise TargetError(f"{label}: {name} is an instance; --kwargs only applies to classes and factories")
            candidate = discovery.Candidate(name, obj, lambda: obj)
        elif callable(obj):
            unknown = unknown_arguments(obj, target.kwargs)
            if unknown:
                raise TargetError(f"{label}: {name}() takes no argument {', '.join(unknown)}")
            missing = missing_arguments(obj, target.kwargs)
            if missing and entry is not None and entry.build is not None and importer is not None:  # the repository's call, or guesses
                candidate = discovery.Candidate(name, obj, lambda: call_planned(obj, entry.build, convert(obj, target.kwargs), importer))
                built = entry.build.source
            elif missing:
                raise TargetError(f"{label}: {name}() needs arguments {describe_arguments(obj, missing)}; pass them with "
                                  f"--kwargs '{kwargs_template(obj, missing)}'")
            else:
                candidate = discovery.Candidate(name, obj, lambda: call_with(obj, target.kwargs))
        else:
            raise TargetError(f"{label}: {name} is a {type(obj).__name__}, not a model, class or factory")
        with self.sites.recording():
            model = self._build(candidate, label.rsplit(":", 1)[0])
        return LoadedModel(label, model, self.sites.for_model(model), namespace, list(target.inputs),
                           origin=_origin(namespace, name, dict(target.kwargs), by_file=target.kind is Kind.FILE_MEMBER) if built is None else None,
                           built=built, classes=discovery.user_classes(model, target.plan),
                           model_class=discovery.class_record(type(model), target.plan),
                           call=entry.call if entry is not None else None, file_plan=target.plan)

    # --- saved models -----------------------------------------------------------------------------------------
    def _load_fixed(self, target: Target, inside: bool = False) -> list[LoadedModel]:
        """A folder written by `--fix` (its manifest checked intact when the target was parsed): the manifest
        names the module and factory (one model), or the model folders inside it (several, `inside` each of which
        is one model). Inputs: --input, else the manifest's, else the folder's `example_inputs()` (the inputs the
        audit used)."""
        assert target.path is not None
        where = display_path(str(target.path))
        try:
            entry = model_entry(target.path)
        except (OSError, ValueError) as exc:
            raise TargetError(f"{where}: unreadable {FIXED_MANIFEST}: {first_line(exc)}") from exc
        if "models" in entry:
            if inside:
                raise TargetError(f"{where}: malformed {FIXED_MANIFEST}: a model folder lists models of its own")
            return [m for name in entry["models"]
                    for m in self._load_fixed(Target(Kind.FIXED, str(target.path / name), path=target.path / name, inputs=list(target.inputs)), inside=True)]
        member = Target(Kind.FILE_MEMBER, target.text, path=target.path / entry["module"], name=entry["factory"],
                        inputs=list(target.inputs) or list(entry["inputs"]))
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
            model = self._build(discovery.Candidate(name, None, build), where)
        origin = {"config": str(target.path.resolve()), "name": name, "kwargs": dict(target.kwargs)}
        return LoadedModel(where, model, self.sites.for_model(model), None, list(target.inputs), origin=origin)


def blocks_left(loaded: LoadedModel) -> list[Skipped]:
    """The user classes a model holds (its own excepted), as not audited: its audit did not complete, so they
    are covered by nothing (unless another result of the run covers them: `findings.settle_provisional`)."""
    left: list[Skipped] = []
    for cls in discovery.module_classes(loaded.model):
        record = discovery.class_record(cls, loaded.file_plan)
        if record is None or record == loaded.model_class or record not in loaded.classes:
            continue
        where = record.key[0]
        command = discovery.needs_arguments(cls, cls.__name__, missing_arguments(cls, {}), where).split("; ", 1)[-1]
        left.append(Skipped(f"{where}:{cls.__name__}", f"not audited: part of {loaded.label}, whose audit did not complete; {command}", record))
    return left


def _origin(namespace: ModuleType, name: str, kwargs: dict[str, Any], by_file: bool = True) -> dict[str, Any]:
    """Where a model comes from, for a fixed folder that must build it again from the user's code: its file
    (a path target), else its importable module (`package.module:NAME`)."""
    path = getattr(namespace, "__file__", None) if by_file else None
    return {"file": str(Path(path).resolve()) if path else None, "module": namespace.__name__, "name": name, "kwargs": kwargs}


def _instance_call(model: nn.Module, plan: FilePlan | None) -> CallHint | None:
    """The repository's call of a module-level instance (`model = Seq2Seq(...)` in train.py): its class's, read
    from the repository file that defines the class."""
    try:
        path = Path(inspect.getsourcefile(type(model)) or "").resolve()
    except TypeError:  # a class of no file
        return None
    if plan is None or not plan.root or not path.is_relative_to(Path(plan.root).resolve()):
        return None
    owner = plan if path == Path(plan.path).resolve() else plan_alone(path)
    entry = owner.plan_for(type(model).__name__) if owner is not None else None
    return entry.call if entry is not None else None


def plan_alone(path: Path) -> FilePlan | None:
    """The plan of a file loaded without the engine having planned it (a loader used on its own)."""
    from auditor.static.plan import shared_planner
    from auditor.static.project import Project
    from auditor.static.repository import find_root

    try:
        return shared_planner(find_root(path), Project()).file_plan(path)
    except Exception:  # noqa: BLE001 - without a plan, a file's models are found as the import shows them
        return None


class RepositoryImporter:
    """Imports the repository's files a plan refers to: the target itself (a notebook: its declaring code),
    and the files whose classes its arguments use; with the repository's root last on sys.path (as scripts
    run from it see it) and, under `missing_packages()`, packages that are not installed stood in for."""

    def __init__(self, path: Path, plan: FilePlan | None, finder: Any = None) -> None:
        self.path = path.resolve()
        self.plan = plan
        self.finder = finder
        self.root = Path(plan.root) if plan is not None and plan.root else None
        self._modules: dict[Path, ModuleType] = {}

    def target(self) -> ModuleType:
        return self(self.path)

    def __call__(self, path: Path) -> ModuleType:
        path = path.resolve()
        if path not in self._modules:
            if self.finder is None:
                self._modules[path] = self._import(path)
            else:
                self._modules[path] = import_tolerating(self.finder, lambda: self._import(path), self._is_local)
        return self._modules[path]

    @property
    def missing(self) -> list[str]:
        return list(self.finder.packages) if self.finder is not None else []

    def _import(self, path: Path) -> ModuleType:
        added = self.root is not None and str(self.root) not in sys.path
        if added:
            sys.path.append(str(self.root))
        try:
            if path.suffix == ".ipynb":
                code = self.plan.code if self.plan is not None and Path(self.plan.path) == path else None
                if code is None:
                    raise TargetError(f"{display_path(str(path))}: a notebook that was not planned")
                return import_notebook(path, code)
            return import_file(path)
        finally:
            if added and str(self.root) in sys.path:
                sys.path.remove(str(self.root))

    def _is_local(self, package: str) -> bool:
        """One of the repository's own modules (a path problem, not a missing package)."""
        folders = [self.path.parent, *([self.root] if self.root is not None else [])]
        return any((f / f"{package}.py").is_file() or (f / package).is_dir() for f in folders)


def _namespace_of(obj: Any) -> ModuleType | None:
    return sys.modules.get(getattr(obj, "__module__", "") or "")


def _helper(model: nn.Module, label: str, plan: ClassPlan | None = None) -> Skipped | None:
    """Losses and parameter-free modules (activations, shuffles) are not models of their own; a class whose
    constructor is misnamed (`def init`) builds as an empty model."""
    if discovery.is_loss(model):
        return Skipped(label, f"a loss function ({type(model).__name__}), not a model; `audit {label}` audits it anyway")
    if next(model.parameters(), None) is None:
        if plan is not None and plan.misnamed_init:
            return Skipped(label, f"an empty model: its constructor is named `{plan.misnamed_init}`, not `__init__`, so Python never "
                                  f"calls it and no layer is created; rename it `__init__`")
        return Skipped(label, f"has no parameters ({type(model).__name__}: an activation or helper), not audited on its own; "
                              f"`audit {label} --input SPEC` audits it")
    return None


def _types_of(loaded: LoadedModel) -> set[type]:
    return {type(m) for m in loaded.model.modules()}


def _covered(item: Loaded, namespace: ModuleType, results: list[Loaded]) -> bool:
    """A class another model of the file holds (built there, or skipped for its arguments, like kuangliu's
    `ResNet` built by `ResNet18()`) is audited as part of it, not on its own."""
    obj = vars(namespace).get(item.label.rsplit(":", 1)[-1])
    if not inspect.isclass(obj) or isinstance(item, BuildFailure) or (isinstance(item, LoadedModel) and type(item.model) is not obj):
        return False
    return any(obj in _types_of(other) for other in results if isinstance(other, LoadedModel) and other is not item)


def _unaccounted(namespace: ModuleType, plan: FilePlan | None, where: str, results: list[Loaded]) -> list[Skipped]:
    """A Skipped record for every nn.Module class of the file that no result stands for and no model holds."""
    named = {r.label.rsplit(":", 1)[-1] for r in results}
    held = {t for r in results if isinstance(r, LoadedModel) for t in _types_of(r)}
    missing = []
    for name, obj in vars(namespace).items():
        if (inspect.isclass(obj) and issubclass(obj, nn.Module) and getattr(obj, "__module__", None) == namespace.__name__
                and name == obj.__name__ and name not in named and obj not in held):
            reason = ("abstract: it cannot be built on its own" if inspect.isabstract(obj)
                      else f"no model of the file builds it; audit it with `audit {where}:{name}`")
            missing.append(Skipped(f"{where}:{name}", f"not audited: {reason}", discovery.class_record(obj, plan)))
    for name, entry in (plan.classes.items() if plan is not None else ()):  # a model class its own file's import hid
        value = vars(namespace).get(name)
        if entry.model and name not in named and not inspect.isclass(value):
            missing.append(Skipped(f"{where}:{name}", f"not audited: after {where} is imported, `{name}` no longer names the class "
                                                      f"(it holds {type(value).__name__}: a decorator or a later assignment replaced it)",
                                   ClassRecord(name, *plan.where(entry.line))))  # type: ignore[union-attr]
    return missing + nested_classes(plan, where, named)


def nested_classes(plan: FilePlan | None, where: str, named: Collection[str] = ()) -> list[Skipped]:
    """The model classes the file defines where its import does not reach (inside a function, a class or the
    main guard): named, since no audit of the file can build them."""
    if plan is None:
        return []
    return [Skipped(f"{where}:{name}", f"not audited: defined {scope}, which the audit does not run; define it at the top "
                                       f"level of the file to audit it", ClassRecord(name, *plan.where(line)))
            for name, (line, scope) in plan.nested.items() if name not in named]


def _unimported(plan: FilePlan | None, where: str, error: TargetError) -> list[Skipped]:
    """The file's model classes (as its source declares them) when its import failed: named, never dropped."""
    if plan is None:
        return []
    return [Skipped(f"{where}:{name}", f"not audited: importing {where} failed ({str(error).split(': ', 1)[-1]})",
                    ClassRecord(name, *plan.where(entry.line)))
            for name, entry in plan.classes.items() if entry.model] + nested_classes(plan, where)


def _is_model_like(obj: Any, namespace: ModuleType) -> bool:
    if isinstance(obj, nn.Module):
        return True
    if getattr(obj, "__module__", None) != namespace.__name__:
        return False
    return (inspect.isclass(obj) and issubclass(obj, nn.Module)) or inspect.isfunction(obj)
