"""Unpickling runs whatever code the pickle names (a `__reduce__` can call `os.system`): nothing is unpickled
unless the user passed --trust-pickle. A pickled model (`.pt`) is refused outright (`loading/models.py`); a saved
torch.export program (`.pt2`) is mostly data, but torch reads some of its parts with full pickle: weights and
constants saved with `"use_pickle": true` (`torch.load(..., weights_only=False)`), opaque objects
(`pickle.loads`), TorchScript objects, and sample inputs, which it retries with `weights_only=False` when the
safe load fails. While such a program is read untrusted, `torch.load` runs with `weights_only=True` (tensors and
plain containers only) and every other unpickler refuses."""

from __future__ import annotations

import contextlib
import pickle
from typing import Any, Iterator

import torch

from auditor.errors import TargetError


class PickleRefused(TargetError):
    """A part of a file would have been unpickled without --trust-pickle."""


def refusal(where: str, what: str) -> str:
    return (f"{where}: refusing to unpickle {what}: unpickling runs any code it contains; "
            "pass --trust-pickle if you trust its source")


@contextlib.contextmanager
def unpickling_refused(where: str) -> Iterator[None]:
    """Only `torch.load(..., weights_only=True)` while torch reads `where`; any full unpickling raises
    PickleRefused before a byte of it is read."""
    load, loads, script_load = torch.load, pickle.loads, torch._C._pickle_load_obj

    def safe_load(f: Any, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> Any:
        if weights_only is False:
            raise PickleRefused(refusal(where, "its pickled weights, constants or inputs"))
        return load(f, *args, weights_only=True, **kwargs)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PickleRefused(refusal(where, "its pickled objects"))

    torch.load, pickle.loads, torch._C._pickle_load_obj = safe_load, refuse, refuse
    try:
        yield
    finally:
        torch.load, pickle.loads, torch._C._pickle_load_obj = load, loads, script_load
