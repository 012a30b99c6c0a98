"""Getting a built model ready to audit: its device, its example inputs, and its captured graph.

Inputs come from --input specs, then the user's `example_inputs()` / `example_input_array`, then inference;
inferred candidates are tried in turn until the model runs on one.
"""

from __future__ import annotations

from typing import Any

import torch

from auditor.capture import capture
from auditor.capture.forward import ForwardFailure
from auditor.errors import TargetError
from auditor.graph import AuditGraph
from auditor.loading.inputs import infer_candidates, make_inputs, provided_inputs
from auditor.loading.models import LoadedModel
from auditor.specs import InputSpec, parse_spec


def place_on_device(loaded: LoadedModel, device: str | None) -> None:
    """Move a model the tool built to the requested device (default: cuda when available). A model handed
    to the Python API stays where its owner put it."""
    if loaded.owned:
        loaded.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def model_device(model: torch.nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def capture_model(
    loaded: LoadedModel, specs: list[str], methods: tuple[str, ...], given: tuple[Any, ...] | None = None
) -> tuple[AuditGraph, tuple[Any, ...]]:
    """The graph and the inputs it was captured with: `given` inputs, else --input specs, else the user's
    example inputs, else inferred ones."""
    device = model_device(loaded.model)
    if given is not None:
        return _capture(loaded, given, device, "the given inputs", methods)
    if specs:
        parsed = [parse_spec(s) for s in specs]
        return _capture(loaded, make_inputs(parsed, loaded.model), device, _shapes(parsed), methods)
    provided = provided_inputs(loaded.model, loaded.namespace)
    if provided is not None:
        inputs, source = provided
        return _capture(loaded, inputs, device, source, methods)
    candidates = infer_candidates(loaded.model)
    first_failure: ForwardFailure | None = None
    partial: tuple[AuditGraph, tuple[Any, ...], list[InputSpec]] | None = None
    for tried in candidates:
        try:
            graph, inputs = _capture(loaded, make_inputs(tried, loaded.model), device, _shapes(tried), methods, raise_forward=True)
        except ForwardFailure as failure:
            first_failure = first_failure or failure
            continue
        if graph.stopped is not None:  # perhaps a wrong guess: an input the whole forward runs on comes first
            partial = partial or (graph, inputs, tried)
            continue
        return _inferred(graph, inputs, tried)
    if partial is not None:
        return _inferred(*partial)
    tried_all = "; ".join(_shapes(c) for c in candidates)
    raise TargetError(f"forward failed on every inferred input ({tried_all}), first with {first_failure}; pass --input SPEC")


def _inferred(graph: AuditGraph, inputs: tuple[Any, ...], tried: list[InputSpec]) -> tuple[AuditGraph, tuple[Any, ...]]:
    graph.notes.append(f"input inferred as {_shapes(tried)}; pass --input to choose another")
    return graph, inputs


def _capture(
    loaded: LoadedModel, inputs: tuple[Any, ...], device: torch.device, described: str, methods: tuple[str, ...],
    raise_forward: bool = False,
) -> tuple[AuditGraph, tuple[Any, ...]]:
    moved = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)
    try:
        return capture(loaded.model, moved, loaded.sites, methods), moved
    except ForwardFailure as failure:
        if raise_forward:
            raise
        raise TargetError(f"forward failed with input {described}: {failure}") from failure


def _shapes(specs: list[InputSpec]) -> str:
    return " ".join(str(s) for s in specs)
