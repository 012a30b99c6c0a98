"""Arguments for a model's class or factory: which it needs, and `--kwargs` JSON turned into what it takes.

JSON has no tuples and no objects of the user's classes, so a value is converted by what the parameter
declares: a list becomes a tuple where the default or annotation is a tuple (`img_size=(224, 224)`), and a
mapping becomes a config object where the annotation or default is a config class (a dataclass, a Hugging Face
`config_class`, minGPT's `get_default_config()`, or the one `*Config` dataclass of the model's module for an
unannotated `config` parameter: nanoGPT's `GPT(config)` with `GPTConfig`).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from typing import Any, Callable

from auditor.errors import TargetError, first_line
from auditor.static.values import CONFIG_PARAMETERS as _CONFIG_PARAMETERS
from auditor.static.values import CONFIG_SUFFIXES as _CONFIG_SUFFIXES

_PLAIN = (dict, list, tuple, set, frozenset, str, int, float, complex, bool, bytes, type(None))  # a mapping stays a mapping
_NOT_CONFIG_MODULES = ("builtins", "typing", "collections.abc", "abc")  # `object`, `Any`, `Mapping`: not config classes

Builder = Callable[[dict[str, Any]], Any]


def parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def missing_arguments(fn: Callable[..., Any], kwargs: dict[str, Any]) -> list[str]:
    return [p.name for p in parameters(fn) if p.default is p.empty and p.name not in kwargs]


def unknown_arguments(fn: Callable[..., Any], kwargs: dict[str, Any]) -> list[str]:
    try:
        signature = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in signature.values()):
        return []
    return [k for k in kwargs if k not in signature]


def accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of --kwargs a discovered candidate takes."""
    names = {p.name for p in parameters(fn)}
    return {k: v for k, v in kwargs.items() if k in names}


def call_with(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """`fn(**kwargs)` with JSON values converted to the tuples and config objects its parameters declare."""
    return fn(**convert(fn, kwargs))


def convert(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    hints = _hints(fn)
    by_name = {p.name: p for p in parameters(fn)}
    converted = {}
    for name, value in kwargs.items():
        parameter = by_name.get(name)
        default = parameter.default if parameter is not None and parameter.default is not parameter.empty else None
        converted[name] = _convert(value, hints.get(name), default, fn, name)
    return converted


def kwargs_template(fn: Callable[..., Any], names: list[str]) -> str:
    """`{"num_classes": ..., "config": {...}}`: what --kwargs must give, a mapping where a config object goes."""
    hints = _hints(fn)
    by_name = {p.name: p for p in parameters(fn)}
    parts = []
    for name in names:
        parameter = by_name.get(name)
        default = parameter.default if parameter is not None and parameter.default is not parameter.empty else None
        config = _config_builder(hints.get(name), default, fn, name) is not None
        parts.append(f'"{name}": {{...}}' if config else f'"{name}": ...')
    return "{" + ", ".join(parts) + "}"


def describe_arguments(fn: Callable[..., Any], names: list[str]) -> str:
    """"depth, config (a GPTConfig, from a JSON object)": the arguments, and what a mapping becomes."""
    hints = _hints(fn)
    described = []
    for name in names:
        cls = _config_class(hints.get(name), None, fn, name)
        if cls is None and inspect.isclass(fn) and callable(getattr(fn, "get_default_config", None)) and name in _CONFIG_PARAMETERS:
            described.append(f"{name} ({fn.__name__}.get_default_config(), updated from a JSON object)")
        else:
            described.append(f"{name} (a {cls.__name__}, from a JSON object)" if cls is not None else name)
    return ", ".join(described)


# --- conversion -------------------------------------------------------------------------------------------------
def _convert(value: Any, hint: Any, default: Any, owner: Callable[..., Any], name: str) -> Any:
    if isinstance(value, list) and (isinstance(default, tuple) or _is_tuple_hint(hint)):
        return tuple(_convert(v, _element_hint(hint), None, owner, name) for v in value)
    if isinstance(value, dict):
        builder = _config_builder(hint, default, owner, name)
        if builder is not None:
            return builder(value)
    return value


def _config_builder(hint: Any, default: Any, owner: Callable[..., Any], name: str) -> Builder | None:
    cls = _config_class(hint, default, owner, name)
    if cls is not None:
        return lambda mapping: build_config(cls, mapping, default)
    make_default = getattr(owner, "get_default_config", None) if inspect.isclass(owner) and name in _CONFIG_PARAMETERS else None
    if callable(make_default):  # minGPT: GPT.get_default_config() -> CfgNode, then set what the JSON gives
        return lambda mapping: _set_fields(make_default(), mapping)
    return None


def _config_class(hint: Any, default: Any, owner: Callable[..., Any], name: str) -> type | None:
    """The class a mapping for this parameter should become, or None to pass the mapping as it is."""
    for candidate in _union_members(hint):
        if _is_config_class(candidate):
            return candidate
    if default is not None and _is_config_class(type(default)) and hasattr(default, "__dict__"):
        return type(default)
    if name not in _CONFIG_PARAMETERS:
        return None
    declared = getattr(owner, "config_class", None) if inspect.isclass(owner) else None
    if inspect.isclass(declared):  # Hugging Face models name their config class
        return declared
    module = sys.modules.get(getattr(owner, "__module__", ""), None)
    configs = [obj for obj_name, obj in vars(module).items() if inspect.isclass(obj) and dataclasses.is_dataclass(obj)
               and obj_name.endswith(_CONFIG_SUFFIXES) and obj.__module__ == module.__name__] if module else []
    return configs[0] if len(configs) == 1 else None


def _is_config_class(candidate: Any) -> bool:
    """A class a JSON mapping can be turned into: the user's (a dataclass, a config class), not a builtin, a
    typing construct or an abstract base."""
    return (inspect.isclass(candidate) and candidate.__module__ not in _NOT_CONFIG_MODULES
            and not issubclass(candidate, _PLAIN) and not inspect.isabstract(candidate))


def config_for(owner: Callable[..., Any], name: str) -> Any:
    """The config object parameter `name` of `owner` declares, built with its own defaults; None when no
    config class is known for it."""
    parameter = next((p for p in parameters(owner) if p.name == name), None)
    default = parameter.default if parameter is not None and parameter.default is not parameter.empty else None
    builder = _config_builder(_hints(owner).get(name), default, owner, name)
    return builder({}) if builder is not None else None


def build_config(cls: type, mapping: dict[str, Any], default: Any = None) -> Any:
    """A config object from a JSON mapping: dataclass fields converted by their types; other classes by
    keyword arguments, else built bare and given the values as attributes."""
    where = f"--kwargs: cannot build {cls.__name__} from {mapping}"
    try:
        if dataclasses.is_dataclass(cls):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            unknown = [k for k in mapping if k not in fields]
            if unknown:
                raise TargetError(f"--kwargs: {cls.__name__} has no field {', '.join(map(repr, unknown))} (fields: {', '.join(fields)})")
            hints = _type_hints(cls)
            values = {k: _convert(v, hints.get(k), getattr(default, k, None), cls, k) for k, v in mapping.items()}
            return dataclasses.replace(default, **values) if isinstance(default, cls) else cls(**values)
        try:
            return cls(**mapping)
        except TypeError:
            return _set_fields(cls(), mapping)
    except TargetError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's config class refused the values
        raise TargetError(f"{where}: {type(exc).__name__}: {first_line(exc)}") from exc


def _set_fields(obj: Any, mapping: dict[str, Any]) -> Any:
    for key, value in mapping.items():
        setattr(obj, key, value)
    return obj


# --- reading annotations ----------------------------------------------------------------------------------------
def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Parameter annotations as objects (string annotations resolved in the function's module)."""
    target = fn.__init__ if inspect.isclass(fn) else fn  # type: ignore[misc]
    return _type_hints(target)


def _type_hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: fall back to the raw ones
        return {k: v for k, v in getattr(target, "__annotations__", {}).items() if not isinstance(v, str)}


def _union_members(hint: Any) -> list[Any]:
    if hint is None:
        return []
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    return [a for a in args if a is not type(None)] if args else [hint]


def _is_tuple_hint(hint: Any) -> bool:
    return any(h is tuple or typing.get_origin(h) is tuple for h in _union_members(hint))


def _element_hint(hint: Any) -> Any:
    for member in _union_members(hint):
        args = typing.get_args(member)
        if typing.get_origin(member) is tuple and args:
            return args[0]
    return None
