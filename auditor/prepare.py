"""Getting a built model ready to audit: its device, its example inputs, and its captured graph.

Inputs come from --input specs, then the user's `example_inputs()` / `example_input_array`, then inference;
inferred candidates are ranked on fake tensors, then tried for real in that order until the model runs on one.
The global random streams are the same afterwards as before (the user's forward may draw from them).
"""

from __future__ import annotations

from typing import Any

import torch

from auditor.capture import capture
from auditor.capture.forward import ForwardFailure
from auditor.capture.state import ModuleState
from auditor.errors import TargetError
from auditor.graph import AuditGraph
from auditor.loading.inputs import infer_candidates, make_inputs, provided_inputs
from auditor.loading.models import LoadedModel
from auditor.loading.shapes import FIRST_TRY_SECONDS, OverBudget, rank, runs_on_fake, time_budget
from auditor.options import CAPTURE_METHODS
from auditor.rng import preserved_rng
from auditor.specs import Spec, parse_spec


def place_on_device(loaded: LoadedModel, device: str | None) -> None:
    """Move a model the tool built to the requested device (default: cuda when available). A model handed
    to the Python API stays where its owner put it, and one without weights stays on meta."""
    if loaded.owned and not loaded.weights.on_meta:
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
    with preserved_rng():
        return _resolve_and_capture(loaded, specs, methods, given)


def _resolve_and_capture(
    loaded: LoadedModel, specs: list[str], methods: tuple[str, ...], given: tuple[Any, ...] | None
) -> tuple[AuditGraph, tuple[Any, ...]]:
    device = model_device(loaded.model)
    methods = _cheapest_first(loaded, methods)
    if given is not None:
        return _capture(loaded, given, device, "the given inputs", methods)
    if specs:
        parsed = [parse_spec(s) for s in specs]
        return _capture(loaded, make_inputs(parsed, loaded.model), device, _shapes(parsed), methods)
    provided = provided_inputs(loaded.model, loaded.namespace)
    if provided is not None:
        inputs, source = provided
        return _capture(loaded, inputs, device, source, methods)
    return _inferred(loaded, device, methods)


def _inferred(loaded: LoadedModel, device: torch.device, methods: tuple[str, ...]) -> tuple[AuditGraph, tuple[Any, ...]]:
    """Inferred candidates tried for real in order, as long as that stays quick; when it runs long (a large
    image through a small-image network), the candidates are ranked on fake tensors and tried in that order."""
    candidates = infer_candidates(loaded.model)
    state = ModuleState(loaded.model)
    try:
        with time_budget(FIRST_TRY_SECONDS):
            return _first_that_runs(loaded, candidates, device, methods)
    except OverBudget:
        state.restore()  # what the interrupted forward wrote into the model
    ranked = rank(candidates, lambda c: runs_on_fake(loaded.model, _moved(make_inputs(c, loaded.model), device)))
    # None fits even on fake tensors: a merge that fails at every size is the model's, and the first guess that
    # runs up to it shows it as well as any other (no more real forwards of large guesses).
    return _first_that_runs(loaded, ranked or candidates, device, methods, first_partial_will_do=ranked is None)


def _first_that_runs(
    loaded: LoadedModel, candidates: list[list[Spec]], device: torch.device, methods: tuple[str, ...],
    first_partial_will_do: bool = False,
) -> tuple[AuditGraph, tuple[Any, ...]]:
    first_failure: ForwardFailure | None = None
    partial: tuple[AuditGraph, tuple[Any, ...], list[Spec]] | None = None
    for tried in candidates:
        try:
            graph, inputs = _capture(loaded, make_inputs(tried, loaded.model), device, _shapes(tried), methods, raise_forward=True)
        except ForwardFailure as failure:
            first_failure = first_failure or failure
            continue
        if not graph.ran_cleanly and not first_partial_will_do:  # perhaps a wrong guess: one the whole forward runs on comes first
            partial = partial or (graph, inputs, tried)
            continue
        return _noted(graph, inputs, tried)
    if partial is not None:
        return _noted(*partial)
    tried_all = "; ".join(_shapes(c) for c in candidates)
    raise TargetError(f"forward failed on every inferred input ({tried_all}), first with {first_failure}; pass --input SPEC{_on_meta(loaded)}")


def _noted(graph: AuditGraph, inputs: tuple[Any, ...], tried: list[Spec]) -> tuple[AuditGraph, tuple[Any, ...]]:
    graph.notes.append(f"input inferred as {_shapes(tried)}; pass --input to choose another")
    return graph, inputs


def _capture(
    loaded: LoadedModel, inputs: tuple[Any, ...], device: torch.device, described: str, methods: tuple[str, ...],
    raise_forward: bool = False,
) -> tuple[AuditGraph, tuple[Any, ...]]:
    moved = _moved(inputs, device)
    try:
        return capture(loaded.model, moved, loaded.sites, methods), moved
    except ForwardFailure as failure:
        if raise_forward:
            raise
        raise TargetError(f"forward failed with input {described}: {failure}{_on_meta(loaded)}") from failure


def _cheapest_first(loaded: LoadedModel, methods: tuple[str, ...]) -> tuple[str, ...]:
    """Without weights, hooks before export: an eager pass over meta tensors costs only the ops' shape functions,
    while export traces each op twice and records its stack, for the same graph (12 s against 1.8 s on a
    Llama-3-70B, where export then fails on the cache it returns). A forced --capture is kept."""
    if loaded.weights.on_meta and methods == CAPTURE_METHODS:
        return ("fx", "hooks", "export")
    return methods


def _on_meta(loaded: LoadedModel) -> str:
    """Why a forward that reads values fails on a model without weights, for its error line."""
    note = loaded.weights.note()
    return f" ({note})" if note else ""


def _moved(inputs: tuple[Any, ...], device: torch.device) -> tuple[Any, ...]:
    """Inputs on the model's device, tuples (an LSTM's `(h0, c0)`) included."""
    return tuple(_moved(v, device) if isinstance(v, tuple) else v.to(device) if isinstance(v, torch.Tensor) else v for v in inputs)


def _shapes(specs: list[Spec]) -> str:
    return " ".join(str(s) for s in specs)
