"""Getting a built model ready to audit: its device, its example inputs, and its captured graph.

Inputs come from --input specs, then the user's `example_inputs()` / `example_input_array`, then guesses
(`loading/guesses.py`). Guessed candidates are ranked on fake tensors (no data computed) and the model runs
for real on the first that fits; where fake tensors are not loaded yet (their first use costs about as much as
importing torch), candidates are first tried for real while that stays quick. The global random streams are the
same afterwards as before (the user's forward may draw from them).

A guess can also decide findings: a merge that fails only because the guessed length does not match a table of
the model, or a shape finding that a second guess the model accepts does not show, is the guess's, not the
model's (`settle_guessed`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from auditor.capture import capture
from auditor.capture.forward import ForwardFailure
from auditor.capture.state import ModuleState
from auditor.errors import TargetError
from auditor.findings import GUESS_NOTE, Finding, InputRecord, Severity
from auditor.graph import INPUT, PARAM, AuditGraph, Node
from auditor.loading.guesses import Candidate, Guesses, Proposal, guesses
from auditor.loading.inputs import make_inputs, provided_inputs, records
from auditor.loading.models import LoadedModel
from auditor.loading.shapes import FIRST_TRY_SECONDS, FakeRun, OverBudget, climb, fake_inputs, fake_run, rank, time_budget
from auditor.rng import preserved_rng
from auditor.specs import InputSpec, Spec, parse_spec

SHAPE_CODES = ("RES001", "RES002", "RES004")  # error findings that follow the input's shape
SECOND_GUESSES = 3  # other candidates captured on fake tensors, at most, to settle them


@dataclass
class Prepared:
    """A captured model: its graph, the inputs it ran on, what each argument was and where it came from, and
    for guessed inputs the other candidates (to settle what a guess alone shows)."""

    graph: AuditGraph
    inputs: tuple[Any, ...]
    records: list[InputRecord]
    chosen: Candidate | None = None
    others: list[Candidate] = field(default_factory=list)


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
) -> Prepared:
    """The graph and the inputs it was captured with: `given` inputs, else --input specs, else the user's
    example inputs, else guessed ones."""
    with preserved_rng():
        return _resolve_and_capture(loaded, specs, methods, given)


def _resolve_and_capture(loaded: LoadedModel, specs: list[str], methods: tuple[str, ...], given: tuple[Any, ...] | None) -> Prepared:
    device = model_device(loaded.model)
    if given is not None:
        return _given(loaded, given, device, "the caller's inputs", methods)
    if specs:
        parsed = [parse_spec(s) for s in specs]
        return _given(loaded, make_inputs(parsed, loaded.model), device, "--input", methods, described=_shapes(parsed))
    provided = provided_inputs(loaded.model, loaded.namespace)
    if provided is not None:
        inputs, source = provided
        return _given(loaded, inputs, device, source, methods)
    return _guessed(loaded, device, methods)


def _given(loaded: LoadedModel, inputs: tuple[Any, ...], device: torch.device, source: str, methods: tuple[str, ...],
           described: str | None = None) -> Prepared:
    graph, moved = _capture(loaded, inputs, device, described or source, methods)
    return Prepared(graph, moved, records(loaded.model, inputs, source))


def _guessed(loaded: LoadedModel, device: torch.device, methods: tuple[str, ...]) -> Prepared:
    """Candidates ranked on fake tensors and tried for real in that order. Before fake tensors are loaded, the
    candidates are first tried for real in their own order while that stays quick, and ranked on fake tensors
    only when that runs long (a large image through a small-image network) or finds no clean run."""
    found = guesses(loaded.model, loaded.call)
    if len(found.candidates) > 1 and _fake_tensors_loaded():
        return _first_that_runs(loaded, *_ranked(loaded, found, device), device, methods)
    state, tried = ModuleState(loaded.model), None
    try:
        with time_budget(FIRST_TRY_SECONDS):
            tried = _first_that_runs(loaded, found.candidates, False, device, methods)
        if tried.graph.ran_cleanly or len(found.candidates) == 1:
            return tried
    except OverBudget:
        state.restore()  # what the interrupted forward wrote into the model
    except TargetError:
        if len(found.candidates) == 1:
            raise
    order, partial_will_do = _ranked(loaded, found, device)
    if tried is not None and partial_will_do:
        return tried  # a merge fails at every size: the first guess shows it, no need to run it again
    try:
        return _first_that_runs(loaded, order, partial_will_do, device, methods)
    except TargetError:
        if tried is None:
            raise
        return tried


def _ranked(loaded: LoadedModel, found: Guesses, device: torch.device) -> tuple[list[Candidate], bool]:
    """The candidates ranked on fake tensors (`shapes.rank`); when none fits, one found by fitting the
    arguments one at a time (`shapes.climb`: a source mask and a target mask of different shapes) comes first."""
    runs: dict[str, FakeRun] = {}

    def run(candidate: Candidate) -> FakeRun:
        key = str(candidate)
        if key not in runs:
            runs[key] = fake_run(loaded.model, _moved(make_inputs(candidate.specs, loaded.model), device))
        return runs[key]

    order, partial_will_do = rank(found.candidates, run)
    if partial_will_do:
        climbed = climb(found.candidates[0], found.least_certain_first(), found.varied, run)
        if climbed is not None:
            return [climbed, *found.candidates], False
    return order, partial_will_do


def _fake_tensors_loaded() -> bool:
    """Whether torch's tracing stack is imported (the fork server preloads it for runs of several targets):
    then a forward on fake tensors costs milliseconds, and wrong guesses need no real forward at all."""
    return "torch._dynamo" in sys.modules


def _first_that_runs(
    loaded: LoadedModel, candidates: list[Candidate], first_partial_will_do: bool, device: torch.device, methods: tuple[str, ...],
) -> Prepared:
    """The first candidate the whole forward runs on; else the first it runs on up to a failed merge, resized
    to fit a tensor of the model's own when that is what the merge failed on. `first_partial_will_do`: every
    candidate is known to fail at a merge (on fake tensors), so the first that runs up to it is taken."""
    first_failure: ForwardFailure | None = None
    partial: Prepared | None = None
    for tried in candidates:
        try:
            graph, inputs = _capture(loaded, make_inputs(tried.specs, loaded.model), device, str(tried), methods, raise_forward=True)
        except ForwardFailure as failure:
            first_failure = first_failure or failure
            continue
        prepared = _prepared(graph, inputs, tried, candidates)
        if graph.ran_cleanly:
            return prepared
        if first_partial_will_do:
            return _refitted(loaded, prepared, device, methods) or prepared
        partial = partial or prepared  # perhaps a wrong guess: one the whole forward runs on comes first
    if partial is not None:
        return _refitted(loaded, partial, device, methods) or partial
    tried_all = "; ".join(str(c) for c in candidates[:6]) + ("; ..." if len(candidates) > 6 else "")
    raise TargetError(f"forward failed on every guessed input ({tried_all}), first with {first_failure}; "
                      f"pass --input SPEC{_on_meta(loaded)}") from first_failure  # the cause: a package it needs, perhaps


def _prepared(graph: AuditGraph, inputs: tuple[Any, ...], chosen: Candidate, candidates: list[Candidate]) -> Prepared:
    guessed = [InputRecord(name, str(p.spec), p.source, guessed=True) for name, p in zip(chosen.names, chosen.proposals)]
    others = [c for c in candidates if c.specs != chosen.specs]
    return Prepared(graph, inputs, guessed, chosen, others)


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


def _refitted(loaded: LoadedModel, partial: Prepared, device: torch.device, methods: tuple[str, ...]) -> Prepared | None:
    """When no guess ran cleanly because the input met a tensor of the model's own of another size (a table
    no name or trace revealed: `x + self.p` with `p` of 8 positions), the guess resized to it, if the whole
    forward then runs on it."""
    assert partial.chosen is not None
    for node in partial.graph.nodes:
        resize = _mismatch(node) if node.error is not None else None
        refit = _resized(partial.chosen, *resize) if resize is not None else None
        if refit is None:
            continue
        try:
            graph, inputs = _capture(loaded, make_inputs(refit.specs, loaded.model), device, str(refit), methods, raise_forward=True)
        except ForwardFailure:
            return None
        return _prepared(graph, inputs, refit, [partial.chosen, *partial.others]) if graph.ran_cleanly else None
    return None


def _mismatch(node: Node) -> tuple[int, int, str] | None:
    """(the input's size, the size a fixed-size operand has, that operand) in the one dim where a failed merge
    of the input with a tensor of the model's own differs."""
    fixed = _fixed_size_operand(node)
    carrying = [i.shape for i in node.tensor_inputs if i.shape is not None and _carries_input(i)]
    shapes = _operand_shapes(node)
    if fixed is None or len(carrying) != 1 or len(shapes) != 2 or carrying[0] not in shapes:
        return None
    ours, theirs = carrying[0], shapes[1 - shapes.index(carrying[0])]
    differing = [(a, b) for a, b in zip(reversed(ours), reversed(theirs)) if a != b and 1 not in (a, b)]
    return (*differing[0], fixed) if len(differing) == 1 else None


def _resized(candidate: Candidate, size: int, wanted: int, fixed: str) -> Candidate | None:
    """The candidate with the first argument dim (past the batch) that is `size`, or `size` times a
    downsampling factor, made `wanted` (times the same factor)."""
    for index, proposal in enumerate(candidate.proposals):
        spec = proposal.spec
        if not isinstance(spec, InputSpec):
            continue
        for dim in range(1, len(spec.shape)):
            factor = next((f for f in (1, 2, 4, 8, 16, 32) if spec.shape[dim] == size * f), None)
            if factor is not None:
                shape = (*spec.shape[:dim], wanted * factor, *spec.shape[dim + 1:])
                resized = Proposal(InputSpec(spec.dtype, shape), f"{proposal.source}, resized to fit {fixed}")
                return Candidate(candidate.names, (*candidate.proposals[:index], resized, *candidate.proposals[index + 1:]))
    return None


# --- what a guess alone shows ------------------------------------------------------------------------------------
def settle_guessed(
    loaded: LoadedModel, prepared: Prepared, findings: list[Finding], findings_of: Callable[[AuditGraph], list[Finding]],
) -> tuple[list[Finding], list[str]]:
    """The findings without those the guessed input alone makes, and a note for each one left out. Only
    error-severity shape findings (SHAPE_CODES) are in question: a merge that fails where a tensor of the
    model's own, computed from no input (a learned position table), meets the guessed input is the guess's;
    so is a finding absent when the model runs on another guess it accepts (captured on fake tensors)."""
    if prepared.chosen is None:
        return findings, []
    doubtful = [f for f in findings if f.code in SHAPE_CODES and f.severity >= Severity.ERROR]
    if not doubtful:
        return findings, []
    dropped: dict[Finding, str] = {}
    nodes = {n.name: n for n in prepared.graph.nodes}
    for finding in doubtful:
        node = nodes.get(finding.node or "")
        fixed = _fixed_size_operand(node) if node is not None and node.error is not None else None
        if fixed is not None:
            dropped[finding] = f"the guessed input does not fit {fixed}"
    remaining = [f for f in doubtful if f not in dropped]
    if remaining:
        second = _second_guess(loaded, prepared)
        if second is not None:
            graph, candidate = second
            shown = {place_of(f) for f in findings_of(graph)}
            for finding in remaining:
                if place_of(finding) not in shown:
                    dropped[finding] = f"absent with another guess the model accepts ({candidate})"
    notes = [f"{GUESS_NOTE}{f.code} at {f.file}:{f.line} not reported: {why}; pass --input to audit it at the model's real size"
             for f, why in dropped.items()]
    return [f for f in findings if f not in dropped], notes


def _fixed_size_operand(node: Node) -> str | None:
    """The operand of a failed merge that no input flows into (`pos_emb` [1, 32, 64]), if any: a parameter or
    buffer, something computed from them alone, or (in a hooks capture, which records no parameter) a tensor
    operand that no recorded node produced."""
    for operand in node.inputs:
        if operand.shape is not None and not _carries_input(operand):
            return f"{_origin(operand)} {list(operand.shape)}"
    if len(node.meta.get("tensor_args", ())) > len(node.tensor_inputs):
        recorded = [i.shape for i in node.tensor_inputs]
        unrecorded = [shape for shape in _operand_shapes(node) if shape not in recorded]
        return "a tensor of the model's own" + (f" {list(unrecorded[0])}" if unrecorded else "")
    return None


def _operand_shapes(node: Node) -> list[tuple[int, ...]]:
    """The operand shapes a failed merge's message lists (`operands of shapes [2, 16, 16] and [1, 8, 16]`)."""
    return [tuple(int(d) for d in found.split(",") if d.strip()) for found in re.findall(r"\[([\d, ]*)\]", node.error or "")]


def _carries_input(node: Node) -> bool:
    """Whether an input's data flows into `node` (through tensors: a size read off the input carries none)."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current.kind == INPUT:
            return True
        if id(current) in seen or (current is not node and current.shape is None):
            continue
        seen.add(id(current))
        stack.extend(current.tensor_inputs)
    return False


def _origin(node: Node) -> str:
    """The parameter or buffer a fixed-size operand was read from (`pos_emb`), else the operand's label."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        params = [current] if current.kind == PARAM else [i for i in current.inputs if i.kind == PARAM]
        if params:
            return f"`{params[0].target}`"
        if id(current) not in seen:
            seen.add(id(current))
            stack.extend(current.tensor_inputs)
    return node.label()


def _second_guess(loaded: LoadedModel, prepared: Prepared) -> tuple[AuditGraph, Candidate] | None:
    """The graph on another candidate the model accepts (its forward runs to the end), captured on fake
    tensors: nothing is computed, so a large guess costs no memory."""
    device = model_device(loaded.model)
    methods = ("fx", "hooks")
    for candidate in prepared.others[:SECOND_GUESSES]:
        try:
            with preserved_rng(), fake_inputs(_moved(make_inputs(candidate.specs, loaded.model), device)) as inputs:
                graph = capture(loaded.model, inputs, loaded.sites, methods)
        except Exception:  # noqa: BLE001 - not accepted: the next one
            continue
        if graph.stopped is None:
            return graph, candidate
    return None


def place_of(finding: Finding) -> tuple[Any, ...]:
    """Where a finding is, across captures of one model on different inputs."""
    return finding.code, finding.module, finding.file, finding.line


# --- helpers ----------------------------------------------------------------------------------------------------
def _on_meta(loaded: LoadedModel) -> str:
    """Why a forward that reads values fails on a model without weights, for its error line."""
    note = loaded.weights.note()
    return f" ({note})" if note else ""


def _moved(inputs: tuple[Any, ...], device: torch.device) -> tuple[Any, ...]:
    """Inputs on the model's device, tuples (an LSTM's `(h0, c0)`) and mappings included."""
    return tuple(_moved_value(v, device) for v in inputs)


def _moved_value(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_moved_value(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved_value(v, device) for k, v in value.items()}
    return value


def _shapes(specs: list[Spec]) -> str:
    return " ".join(str(s) for s in specs)
