"""`[tool.auditor]` in pyproject.toml: read, validate, and merge with the command line.

An unknown key or a malformed value is a usage error naming the key and the file, as ruff does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import UsageError
from auditor.findings import Severity
from auditor.limits import check_nesting, check_timeout, quoted
from auditor.memory import parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

KNOWN_KEYS = {"select", "ignore", "fail-on", "targets", "per-module-ignores", "settings", "exclude", "device", "baseline", "max-memory", "timeout", "cache-dir"}
TARGET_KEYS = {"target", "kwargs", "input"}
DEFAULT_EXCLUDE = [".git", ".hg", ".venv", "venv", "env", "__pycache__", "build", "dist", "site-packages", "dist-packages", "__pypackages__", "node_modules", ".tox", ".nox", ".eggs"]


@dataclass
class TargetConfig:
    """One entry of `targets`: a target string, constructor arguments and input specs."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)


@dataclass
class Config:
    select: list[str] = field(default_factory=lambda: ["ALL"])
    ignore: list[str] = field(default_factory=list)
    fail_on: Severity = Severity.ERROR
    targets: list[TargetConfig] = field(default_factory=list)
    per_module_ignores: dict[str, list[str]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    device: str | None = None
    baseline: Path | None = None  # `baseline = "FILE"`, resolved against the config file's folder
    max_memory: int | None = None  # `max-memory = "8GiB"`: above it a model is audited on meta
    timeout: float | None = None  # seconds per target (0: no limit); None: the runner's default
    cache_dir: Path | None = None  # `cache-dir = "DIR"`, resolved against the config file's folder (`~` expanded)
    path: Path | None = None  # the file it came from; target paths are relative to its folder


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above `start` that has a [tool.auditor] table."""
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        try:
            found = candidate.is_file()
        except OSError:  # a folder this user may not look into (mode 000): no config can be read from it
            continue
        if found:
            try:
                if "auditor" in _read_toml(candidate).get("tool", {}):
                    return candidate
            except UsageError:
                return candidate  # report its syntax error when it is loaded
    return None


def load_config(path: Path | None, *, explicit: bool = False) -> Config:
    """Read [tool.auditor] from `path` (pyproject.toml) or, for an explicit --config, a plain auditor TOML file."""
    if path is None:
        return Config()
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    document = _read_toml(path)
    table = document.get("tool", {}).get("auditor")
    if table is None:
        if explicit and path.name != "pyproject.toml":
            table = document  # a dedicated file (e.g. audit.toml) holds the keys at top level
        else:
            table = {}
    return parse_table(table, path)


def parse_table(table: dict[str, Any], path: Path) -> Config:
    where = f"in {path}"
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise UsageError(f"unknown key [tool.auditor] {unknown[0]!r} {where} (known: {', '.join(sorted(KNOWN_KEYS))})")
    config = Config(path=path)
    if "select" in table:
        config.select = _string_list(table["select"], "select", where)
    if "ignore" in table:
        config.ignore = _string_list(table["ignore"], "ignore", where)
    if "fail-on" in table:
        try:
            config.fail_on = Severity.parse(_string(table["fail-on"], "fail-on", where))
        except ValueError as exc:
            raise UsageError(f"fail-on {where}: {exc}") from None
    if "exclude" in table:
        config.exclude = DEFAULT_EXCLUDE + _string_list(table["exclude"], "exclude", where)
    if "device" in table:
        config.device = _string(table["device"], "device", where)
        if config.device not in ("cpu", "cuda"):
            raise UsageError(f"device {where}: expected 'cpu' or 'cuda', got {config.device!r}")
    if "max-memory" in table:
        config.max_memory = parse_size(_string(table["max-memory"], "max-memory", where), f"max-memory {where}:")
    if "baseline" in table:
        config.baseline = path.parent / _string(table["baseline"], "baseline", where)
    if "cache-dir" in table:
        config.cache_dir = path.parent / Path(_string(table["cache-dir"], "cache-dir", where)).expanduser()
    if "timeout" in table:
        config.timeout = check_timeout(table["timeout"], f"timeout {where}:")
    if "per-module-ignores" in table:
        ignores = table["per-module-ignores"]
        if not isinstance(ignores, dict):
            raise UsageError(f"per-module-ignores {where}: expected a table of module globs to code lists")
        config.per_module_ignores = {
            str(glob): _string_list(codes, f"per-module-ignores.{glob!r}", where) for glob, codes in ignores.items()
        }
    if "settings" in table:
        if not isinstance(table["settings"], dict):
            raise UsageError(f"settings {where}: expected a table")
        config.settings = dict(table["settings"])
    if "targets" in table:
        config.targets = [_target(entry, i, where) for i, entry in enumerate(_list(table["targets"], "targets", where))]
    return config


def validate_settings(settings: dict[str, Any], defaults: dict[str, Any], where: str) -> dict[str, Any]:
    """Merge user settings over the rules' defaults; unknown names and wrong types are usage errors."""
    merged = dict(defaults)
    for name, value in settings.items():
        if name not in defaults:
            raise UsageError(f"unknown setting {name!r} {where} (known: {', '.join(sorted(defaults))})")
        default = defaults[name]
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, (int, float)) and not isinstance(value, (int, float))
        ) or (isinstance(default, str) and not isinstance(value, str)):
            raise UsageError(f"setting {name!r} {where}: expected {type(default).__name__}, got {value!r}")
        merged[name] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    except ValueError:  # int()'s digit limit
        raise UsageError(f"{path}: invalid TOML: a number with more than {sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise UsageError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def _target(entry: Any, index: int, where: str) -> TargetConfig:
    key = f"targets[{index}]"
    if isinstance(entry, str):
        return TargetConfig(target=entry)
    if not isinstance(entry, dict):
        raise UsageError(f"{key} {where}: expected a string or a table with 'target'")
    unknown = sorted(set(entry) - TARGET_KEYS)
    if unknown:
        raise UsageError(f"unknown key {key}.{unknown[0]} {where} (known: {', '.join(sorted(TARGET_KEYS))})")
    if "target" not in entry:
        raise UsageError(f"{key} {where}: missing 'target'")
    kwargs = entry.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise UsageError(f"{key}.kwargs {where}: expected a table")
    check_nesting(kwargs, f"{key}.kwargs {where}")
    inputs = entry.get("input", [])
    if isinstance(inputs, str):
        inputs = [inputs]
    return TargetConfig(
        target=_string(entry["target"], f"{key}.target", where),
        kwargs=kwargs,
        inputs=_string_list(inputs, f"{key}.input", where),
    )


def _string(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{key} {where}: expected a string, got {quoted(repr(value))}")
    if "\0" in value:  # no path or name holds one: os calls would raise ValueError
        raise UsageError(f"{key} {where}: a NUL character in {quoted(value)}")
    return value


def _list(value: Any, key: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise UsageError(f"{key} {where}: expected a list, got {value!r}")
    return value


def _string_list(value: Any, key: str, where: str) -> list[str]:
    return [_string(item, key, where) for item in _list(value, key, where)]
