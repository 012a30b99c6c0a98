"""Capture a model's graph: fx first, then hooks on one eager forward pass, then torch.export.

Every method yields the same `AuditGraph`, so rules never know which one ran; the result says which did and
why the earlier ones failed. Hooks come before export: on the 45 zoo models fx cannot trace (Hugging Face,
some timm models) both gave the same findings, and the eager pass costs about one forward pass where export
traces every op on fake tensors (2-5x less capture time). Export still settles what the eager pass cannot: a
forward on meta tensors that reads values (a padding check that skips itself while traced). The model is
captured in eval mode without gradients, and its train/eval state is restored afterwards; autocast regions its
forward enters are inert meanwhile (`float32.py`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Callable, Iterator

import torch.nn as nn

from auditor.capture.common import Site, iter_tensors
from auditor.capture.float32 import inert_autocast
from auditor.errors import first_line
from auditor.capture.forward import ForwardFailure
from auditor.capture.state import ModuleState
from auditor.graph import AuditGraph
from auditor.options import CAPTURE_METHODS

_NOISY_LOGGERS = ("torch._subclasses.fake_tensor", "torch._dynamo", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes")


class CaptureError(Exception):
    """No method could capture the model."""


def capture(model: nn.Module, inputs: tuple[Any, ...], sites: dict[str, Site], methods: tuple[str, ...] = CAPTURE_METHODS) -> AuditGraph:
    """The graph of `model` on `inputs` by the first method that works.

    Raises ForwardFailure when the model itself fails on these inputs (seen in a real forward pass, or in every
    method on meta), and
    CaptureError when every method failed for other reasons.
    """
    notes: list[str] = []
    forward_failed: ForwardFailure | None = None
    # On meta an eager pass has no values to read (a Hugging Face padding check), so it settles nothing: export,
    # whose traced forward skips such checks, still gets its try.
    settles = not any(t.is_meta for t in iter_tensors(inputs))
    with eval_mode(model), quiet_torch(), inert_autocast():
        # A failed attempt must not leave its traces (a Proxy, a fake tensor) for the next; taken in eval mode,
        # so that putting them back does not put the next attempt in training mode.
        state = ModuleState(model)
        for method in methods:
            if method == "export" and forward_failed is not None and settles:
                continue  # export runs the same forward symbolically; only a real eager pass can settle it
            try:
                graph = _capturer(method)(model, inputs, sites)
            except ForwardFailure as failure:
                state.restore()
                if method == "hooks" and settles:
                    raise
                forward_failed = failure
                notes.append(f"hooks: the forward on meta failed ({failure})" if method == "hooks" else f"{method}: the traced forward failed ({failure}); checked eagerly")
                continue
            except Exception as exc:  # noqa: BLE001 - any capture failure moves on to the next method
                state.restore()
                notes.append(f"{method}: {type(exc).__name__}: {first_line(exc)}")
                continue
            if method == "export":  # symbolic: what its forward wrote into the module is fake
                state.restore()
            graph.notes = notes + graph.notes
            return graph
    if forward_failed is not None:
        raise forward_failed
    raise CaptureError("; ".join(notes) or "no capture method was tried")


def _capturer(method: str) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Site]], AuditGraph]:
    if method == "fx":
        from auditor.capture.fx import capture_fx

        return capture_fx
    if method == "export":
        from auditor.capture.export import capture_export

        return capture_export
    if method == "hooks":
        from auditor.capture.hooks import capture_hooks

        return capture_hooks
    raise ValueError(f"unknown capture method {method!r}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every module's own training flag back as it was."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch.export logs tracebacks and warns while it works; a failed attempt must not reach the user."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in _NOISY_LOGGERS]
    for logger, _ in saved:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
