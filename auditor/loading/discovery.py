"""A whole file's models, and every nn.Module class of the file accounted for.

What to build comes from the file's plan (`auditor.static.plan`: the repository's own calls, defaults, guesses);
what is a model is decided by the runtime MRO of what the import yields (a class deriving from a wrapper
package's base is one, whatever its base is named). Each class defined in the file ends as exactly one of:
the class of an audited model, a class covered inside one (`capture.classes`), or a `Skipped` record with why
and the command that audits it. Building blocks (classes another model of the repository uses) are audited
inside their user; one whose users in this file did not cover it is built on its own, and one whose users
live in other files is recorded as skipped for the run to drop once another target covers it.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import torch.nn as nn

from auditor.files import installed
from auditor.findings import ClassRecord
from auditor.loading.arguments import accepted, call_with, convert, describe_arguments, kwargs_template, missing_arguments
from auditor.loading.plans import Importer, call_planned
from auditor.locations import display_path
from auditor.static.outline import FACTORY_NAMES
from auditor.static.plan import REQUIRED, ClassPlan, FilePlan, Parameter, takes_module


@dataclass
class Candidate:
    """Something of the file to build: an instance, a factory or a class, and how."""

    name: str
    obj: Any
    build: Callable[[], nn.Module]
    built: str | None = None  # "built as in train.py:41" / "built with guessed arguments: ..."
    soft: bool = False  # a failed build means "needs arguments" (guessed, or defaults of None), not an error
    plan: ClassPlan | None = None
    origin_kwargs: dict[str, Any] | None = None  # the arguments as plain values, for --fix to build it again (None: not plain)


@dataclass
class Skip:
    name: str
    reason: str
    cls: type | None = None  # the class the record stands for


def candidates(namespace: ModuleType, plan: FilePlan | None, kwargs: dict[str, Any], where: str, importer: Importer) -> tuple[list[Candidate | Skip], list[type]]:
    """Candidates in file order (module-level instances, factories, model classes), and the building blocks
    left for later (classes another model of the repository uses)."""
    found: list[Candidate | Skip] = []
    blocks: list[type] = []
    for name, obj in vars(namespace).items():
        if name.startswith("__"):
            continue
        if isinstance(obj, nn.Module):
            if not name.startswith("_") or _defined_in(type(obj), namespace):  # `_model = _Backbone()`
                found.append(Candidate(name, obj, lambda obj=obj: obj))
        elif not _defined_in(obj, namespace):
            continue
        elif inspect.isclass(obj) and issubclass(obj, nn.Module) and not inspect.isabstract(obj):
            entry = plan.plan_for(name) if plan is not None else None
            if entry is not None and entry.users:
                blocks.append(obj)
            else:
                found.append(planned(name, obj, entry, kwargs, where, importer))
        elif inspect.isfunction(obj) and _is_factory(name, obj, plan, namespace):
            entry = plan.plan_for(name) if plan is not None else None
            if entry is not None and entry.users:
                continue  # built by another model of the repository
            missing = missing_arguments(obj, kwargs)
            from_site = entry is not None and entry.build is not None and entry.build.site is not None and not entry.build.guessed
            if not missing or name in FACTORY_NAMES or from_site:  # other factories that need arguments are helpers
                found.append(planned(name, obj, entry, kwargs, where, importer))
    return found, blocks


def planned(name: str, obj: Callable[..., Any], entry: ClassPlan | None, kwargs: dict[str, Any], where: str, importer: Importer) -> Candidate | Skip:
    """How to build a class or factory: --kwargs (the keys it accepts) over its plan; or why it is skipped."""
    given = accepted(obj, kwargs)
    missing = missing_arguments(obj, given)
    cls = obj if inspect.isclass(obj) else None
    if missing and is_loss(obj):
        return Skip(name, f"a loss function, not a model; audit it with `audit {where}:{name}{_template(obj, missing)}`", cls)
    if entry is not None and entry.hazard is not None:  # what discovery may not do (naming it is consent)
        return Skip(name, f"not built: its constructor would run {entry.hazard}; `audit {where}:{name}{_template(obj, missing)}` "
                          "builds it on purpose", cls)
    build = entry.build if entry is not None else None
    if not missing and (build is None or build.from_defaults or set(given) >= {k for k, _ in build.kwargs}):
        soft = entry is not None and bool(entry.none_defaults)
        return Candidate(name, obj, lambda: call_with(obj, given), "built with --kwargs" if given else build.source if build else None,
                         soft, entry, dict(given))
    if build is not None:
        planned_kwargs = {**dict(build.kwargs), **given}
        plain = planned_kwargs if not build.args and all(_plain(v) for v in planned_kwargs.values()) else None
        built = build.source + (f"; --kwargs {', '.join(given)}" if given else "")
        return Candidate(name, obj, lambda: call_planned(obj, build, convert(obj, given), importer),
                         built, bool(build.guessed) or build.site is None, entry, plain)
    return Skip(name, needs_arguments(obj, name, missing, where), cls)


def refused(error: BaseException) -> str | None:
    """What the child's guard refused while the user's code ran (`auditor.guard`), if that is why it failed."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        if isinstance(current, PermissionError) and str(current).startswith("auditor: refused"):
            return str(current).split(": ", 2)[-1]
        current, seen = current.__cause__ or current.__context__, seen + 1
    return None


def failed_guess(candidate: Candidate, error: Exception, where: str) -> str:
    """Why a class built from guesses (or from defaults of None) is skipped: it needs real arguments."""
    missing = missing_arguments(candidate.obj, {}) or list(candidate.plan.none_defaults if candidate.plan is not None else ())
    tried = candidate.built or "built from its defaults"
    return f"{needs_arguments(candidate.obj, candidate.name, missing, where)} ({tried}: {str(error).split(': ', 1)[-1]})"


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def needs_arguments(obj: Callable[..., Any], name: str, missing: list[str], where: str, why: str | None = None) -> str:
    """The reason of a skipped class or factory that needs arguments, with a command that works: --kwargs
    for values JSON can carry, a factory for a module argument (JSON cannot carry one)."""
    modules = [p for p in missing if _module_parameter(obj, p)]
    described = describe_arguments(obj, missing)
    if modules:
        return (f"needs constructor arguments: {described}; {', '.join(modules)} take{'s' if len(modules) == 1 else ''} a module, which "
                f"--kwargs cannot give: audit it through a factory that builds it (`def build(): return {name}(...)`, "
                f"then `audit {where}:build`)")
    return f"needs constructor arguments: {described}; audit it with `audit {where}:{name}{_template(obj, missing)}`"


def _template(obj: Callable[..., Any], missing: list[str]) -> str:
    return f" --kwargs '{kwargs_template(obj, missing)}'" if missing else ""


def _module_parameter(obj: Callable[..., Any], name: str) -> bool:
    """A parameter that takes a module: annotated with an nn.Module class, or named and defaulted like one."""
    try:
        parameter = inspect.signature(obj).parameters[name]
    except (TypeError, ValueError, KeyError):
        return False
    annotation = parameter.annotation
    if inspect.isclass(annotation) and issubclass(annotation, nn.Module):
        return True
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None) if annotation is not parameter.empty else None
    return takes_module(Parameter(name, REQUIRED if parameter.default is parameter.empty else parameter.default, text))


def block_plan(cls: type, plan: FilePlan | None, where: str) -> tuple[bool, ClassPlan | None]:
    """Whether every user of a building block lives in this file (so this file knows it went unbuilt)."""
    entry = plan.plan_for(cls.__name__) if plan is not None else None
    users = entry.users if entry is not None else ()
    return all(u.rsplit(":", 1)[0] == where for u in users), entry


def user_classes(model: nn.Module, plan: FilePlan | None) -> list[ClassRecord]:
    """The user classes a model holds, its own first: classes defined outside torch, the tool, installed
    packages and the standard library."""
    return [record for cls in module_classes(model) if (record := class_record(cls, plan)) is not None]


def module_classes(model: nn.Module) -> list[type]:
    """The classes of a model's modules, its own first, each followed by the nn.Module classes it derives from
    (`NNBase` under `MLPBase`: its constructor and methods ran as part of it); each once."""
    found: dict[type, None] = {}
    for module in model.modules():
        found.update((cls, None) for cls in type(module).__mro__ if issubclass(cls, nn.Module))
    return list(found)


def class_record(cls: type, plan: FilePlan | None) -> ClassRecord | None:
    path = _source_file(cls)
    if path is None or not _is_user_file(path):
        return None
    if plan is not None and os.path.realpath(path) == os.path.realpath(plan.path):
        entry = plan.plan_for(cls.__name__)
        file, line = plan.where(entry.line) if entry is not None else (plan.label, 0)
        return ClassRecord(cls.__name__, file, line)
    try:
        line = inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        line = 0
    return ClassRecord(cls.__name__, display_path(path), line)


def _source_file(cls: type) -> str | None:
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    return path if isinstance(path, str) else None


def _is_user_file(path: str) -> bool:
    tool = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep
    return not installed(path) and not os.path.realpath(path).startswith(tool)


def _defined_in(obj: Any, namespace: ModuleType) -> bool:
    return getattr(obj, "__module__", None) == namespace.__name__


def _is_factory(name: str, fn: Callable[..., Any], plan: FilePlan | None, namespace: ModuleType) -> bool:
    """Named like a factory, or returning a model (the plan read its returns; the annotation may name one)."""
    if name in FACTORY_NAMES or (plan is not None and name in plan.factories):
        return True
    annotation = inspect.signature(fn).return_annotation if callable(fn) else None
    if isinstance(annotation, str):
        annotation = vars(namespace).get(annotation)
    return inspect.isclass(annotation) and issubclass(annotation, nn.Module)


def is_loss(obj: Any) -> bool:
    cls = obj if inspect.isclass(obj) else type(obj)
    return issubclass(cls, nn.modules.loss._Loss) or any(c.__name__.endswith("Loss") for c in cls.__mro__)
