"""Results as cache entries store them: every field of every record (the contract's JSON drops some that people's
formats and baselines read, such as a finding's `key` and `group`), decoded back into the same dataclasses.

Decoding is driven by the dataclasses' own field types, so a field added to a record is stored without a change
here; a value of the wrong type makes the entry invalid (ValueError), never a result.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from pathlib import PurePath
from typing import Any, Union

from auditor.findings import TargetResult
from auditor.report.json import jsonable


def encode(results: list[TargetResult]) -> list[dict[str, Any]]:
    return [plain(result) for result in results]


def decode(records: Any) -> list[TargetResult]:
    if not isinstance(records, list):
        raise ValueError("results: not a list")
    return [_value(TargetResult, record) for record in records]


def plain(value: Any) -> Any:
    """`value` as JSON holds it: records as tables, enums as their values, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    return plain(jsonable(value))  # a tensor or numpy number among probe measurements: as the JSON report writes it


def _value(kind: Any, data: Any) -> Any:
    """`data` as a value of the annotated type `kind`."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if data is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _value(option, data)
            except ValueError:
                continue
        raise ValueError(f"{data!r}: none of {kind}")
    if origin is list:
        if not isinstance(data, list):
            raise ValueError(f"{data!r}: not a list")
        return [_value(typing.get_args(kind)[0], item) for item in data]
    if origin is dict:
        if not isinstance(data, dict):
            raise ValueError(f"{data!r}: not a table")
        return data
    if dataclasses.is_dataclass(kind):
        return _record(kind, data)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(data)
    if kind is Any:
        return data
    if kind is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if not isinstance(data, kind) or (kind is int and isinstance(data, bool)):
        raise ValueError(f"{data!r}: not {kind.__name__}")
    return data


def _record(kind: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{data!r}: not a {kind.__name__} record")
    hints = _hints(kind)
    names = {f.name for f in dataclasses.fields(kind)}
    if set(data) != names:
        raise ValueError(f"{kind.__name__}: fields {sorted(set(data) ^ names)} differ")
    return kind(**{name: _value(hints[name], item) for name, item in data.items()})


@functools.lru_cache(maxsize=None)
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)
