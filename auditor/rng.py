"""The process's random streams (Python, NumPy, torch CPU and CUDA), saved and put back: running the user's
forward (dropout, `torch.randn_like` in a VAE) must not change what their next `torch.rand` returns."""

from __future__ import annotations

import contextlib
import random
import sys
from typing import Any, Iterator

import torch


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        states["numpy"] = numpy.random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "numpy" in states:
        sys.modules["numpy"].random.set_state(states["numpy"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    states = rng_states()
    try:
        yield
    finally:
        restore_rng(states)
