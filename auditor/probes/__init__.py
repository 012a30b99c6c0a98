"""Dynamic probes: run a deep copy of the model on a seeded surrogate task and measure what static rules cannot.

`run_probes` is the one entry point. It measures, and never judges: the probe rules in `rules/` (scope
"probe") read the `Measurements` and decide what is a finding. The user's model is never touched (deep copy;
RNG states, grad mode and train/eval flags restored).

Stages, each a small multiple of one training step:
1. gradients (`gradients.py`, `watch.py`): `probe-passes` float32 forward/backward passes in training mode,
   per weight layer gradient and activation statistics, every op's value range, where NaN/Inf first appear;
2. precision (`precision.py`): autocast against float32 on one batch;
3. training steps (`precision.train_steps`): AMP steps with GradScaler, unscale_ and clipping (`probe-steps`
   under float16; one under bfloat16, see `precision.amp_steps`).
The total gradient norm of every backward of stages 1 and 3 feeds the clipping statistics (`clipping.py`): a
float32 pass at initialization is a training step's gradient as much as an AMP step's is, so no extra pass is
run for them.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from auditor.errors import first_line
from auditor.graph import AuditGraph
from auditor.prepare import model_device
from auditor.probes import clipping, precision
from auditor.probes.gradients import LayerRecorder, applied_by_calls
from auditor.probes.isolation import preserved, working_copy
from auditor.probes.isolation import seed as seed_rng
from auditor.probes.measurements import Clipping, LayerStats, Measurements, OpEvent, Precision
from auditor.probes.surrogate import Task, primary_output
from auditor.probes.tensors import all_finite, max_abs, total_norm
from auditor.probes.watch import Watcher
from auditor.rule import default_settings

__all__ = ["Clipping", "LayerStats", "Measurements", "OpEvent", "Precision", "run_probes"]


def run_probes(
    model: nn.Module, inputs: tuple[Any, ...], graph: AuditGraph | None, settings: dict[str, Any], *, strict: bool = False,
    loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
) -> Measurements:
    """Measure `model` on `inputs` (the captured example inputs). A stage that fails becomes a note (or, with
    `strict`, raises): the others still run. `loss(copy, output)`: the real training loss of an output of the
    working copy, used instead of the surrogate where it works."""
    config = {**default_settings(), **settings}
    started = time.perf_counter()
    with preserved(model):
        measurements = Measurements(device=model_device(model).type, mode="train", loss="", passes=max(1, int(config["probe-passes"])))
        try:
            work = working_copy(model)
        except Exception as exc:  # noqa: BLE001 - probes never run on the user's own model
            if strict:
                raise
            measurements.skipped = f"the model cannot be deep-copied ({type(exc).__name__}: {first_line(exc)})"
            measurements.notes.append(f"probes skipped: {measurements.skipped}")
            return measurements
        lowered = _in_float32(work)
        if lowered is not None:
            inputs = tuple(t.float() if _is_float(t) and t.dtype in _LOW_PRECISION else t for t in inputs)
            measurements.notes.append(f"the model's weights are {lowered}: probed in float32 on a copy (the probes measure float32 training)")
        given = (lambda output: loss(work, output)) if loss is not None else None
        task = Task(inputs, graph, int(config["probe-seed"]), given, _loss_name(loss))
        step_norms: list[float] = []  # the total gradient norm of every backward, for the clipping statistics
        stages = [
            ("gradient probe", lambda: _gradients(work, task, measurements, config, step_norms)),
            ("mixed-precision probe", lambda: _precision(work, task, measurements, config, step_norms)),
        ]
        for name, stage in stages:
            try:
                stage()
            except ForwardFails as exc:
                measurements.skipped = str(exc)
                measurements.notes.append(f"probes skipped: {exc}")
                break
            except Exception as exc:  # noqa: BLE001 - one failed stage must not hide the others' numbers
                if strict:
                    raise
                measurements.notes.append(f"{name} failed: {type(exc).__name__}: {first_line(exc)}")
        measurements.loss = task.kind or ""
        if task.given_failed is not None:
            measurements.notes.append(f"the given training loss failed ({task.given_failed}); probed with the surrogate {task.kind} loss")
        if step_norms:
            measurements.clipping = clipping.summarize(step_norms, _clip_threshold(config))
    measurements.seconds = time.perf_counter() - started
    return measurements


class ForwardFails(Exception):
    """The model's own forward fails on the inputs (in training and in eval mode): no probe can run."""


# --- stage 1: gradients, signal, ranges, non-finite -------------------------------------------------------------
def _gradients(work: nn.Module, task: Task, m: Measurements, config: dict[str, Any], step_norms: list[float]) -> None:
    seed = int(config["probe-seed"])
    _check_state(work, m)
    if m.non_finite is None and any(_is_float(t) and not all_finite(t) for t in task.inputs):
        m.non_finite = OpEvent("the example input", "", None, math.nan, detail="the example input itself contains NaN or Inf")
        m.non_finite_where = "input"
    work.train()
    recorder = LayerRecorder(work, applied_by_calls(task.graph))
    watcher = Watcher(float(config["overflow-limit"])).attach(work)
    grads: list[dict[str, float | None]] = []
    output_stds: list[float] = []
    step_times: list[float] = []
    batch0 = task.batch(0)
    m.precision = Precision(autocast_dtype=_dtype_name(precision.autocast_dtype(model_device(work).type)))
    m.precision.input_max_abs = max((max_abs(t) for t in batch0 if _is_float(t) and t.numel()), default=0.0)
    try:
        for index in range(m.passes):
            batch = _requiring_grad(task.batch(index))
            work.zero_grad(set_to_none=True)
            recorder.start(batch)
            watcher.reset_stack()
            started = time.perf_counter()
            output = _forward(work, batch, watcher, recorder, seed + index, m, index)
            recorder.stop()
            loss = task.loss(output, index)
            loss.backward()
            step_times.append(time.perf_counter() - started)
            grads.append(recorder.grad_norms())
            step_norms.append(total_norm([p.grad for p in work.parameters() if p.grad is not None]))
            primary = primary_output(output)
            if primary is not None and primary.numel() > 1:
                output_stds.append(float(primary.detach().float().std()))
            if m.non_finite is None:
                where = _non_finite(primary, loss, work)
                if where is not None:
                    _locate(work, task, batch, index, watcher, where, m, seed, config)
    finally:
        recorder.remove()
        watcher.detach()
    m.layers = recorder.summary(grads)
    m.output_std = sum(output_stds) / len(output_stds) if output_stds else None
    m.step_seconds = min(step_times) if step_times else None
    m.precision.max_abs, m.precision.max_abs_module = watcher.max_abs, watcher.max_abs_module
    m.precision.overflow, m.precision.overflow_ops = watcher.overflow, watcher.overflow_count


def _forward(work: nn.Module, batch: tuple[Any, ...], watcher: Watcher, recorder: LayerRecorder, seed: int, m: Measurements, index: int) -> Any:
    """One watched forward; a model that cannot run in training mode on these inputs (BatchNorm with a batch of
    one) is probed in eval mode, with a note."""
    seed_rng(seed, model_device(work))
    try:
        with watcher:
            return work(*batch)
    except Exception as exc:  # noqa: BLE001 - retried once in eval mode, else the stage fails
        if index > 0 or m.mode != "train":
            raise
        work.eval()
        m.mode = "eval"
        m.notes.append(f"the model fails in training mode on these inputs ({first_line(exc)}); probed in eval mode")
        recorder.passes.pop()
        recorder.start(batch)
        watcher.reset_stack()
        seed_rng(seed, model_device(work))
        try:
            with watcher:
                return work(*batch)
        except Exception:  # noqa: BLE001 - the model does not run at all: nothing to measure
            m.mode = "train"
            m.notes.pop()
            raise ForwardFails(f"the model's forward fails on these inputs: {type(exc).__name__}: {first_line(exc)}") from exc


def _check_state(work: nn.Module, m: Measurements) -> None:
    """NaN or Inf already in a weight or buffer: nothing downstream can be finite."""
    with torch.no_grad():
        for kind, named in (("parameter", work.named_parameters()), ("buffer", work.named_buffers())):
            for name, tensor in named:
                if _is_float(tensor) and not all_finite(tensor):
                    module = name.rpartition(".")[0]
                    m.non_finite = OpEvent(f"{kind} `{name}`", module, None, max_abs(tensor), detail=f"{kind} `{name}` contains NaN or Inf")
                    m.non_finite_where = "weights"
                    return


def _non_finite(primary: torch.Tensor | None, loss: torch.Tensor, work: nn.Module) -> str | None:
    with torch.no_grad():
        if primary is not None and not all_finite(primary):
            return "output"
        if not math.isfinite(float(loss)):
            return "loss"
        for p in work.parameters():
            if p.grad is not None and not all_finite(p.grad):
                return "gradients"
    return None


def _locate(work: nn.Module, task: Task, batch: tuple[Any, ...], index: int, watcher: Watcher, where: str, m: Measurements, seed: int, config: dict[str, Any]) -> None:
    """Name the first op that produced the non-finite value: from the forward pass just watched, or, when the
    forward was finite, from a second pass on the same batch watching each op's backward."""
    m.non_finite_where = where
    if watcher.origin is not None:
        m.non_finite = watcher.origin
        return
    if where == "gradients":
        tracer = Watcher(float(config["overflow-limit"]), backward=True).attach(work)
        try:
            work.zero_grad(set_to_none=True)
            again = _requiring_grad(task.batch(index))
            seed_rng(seed + index, model_device(work))
            with tracer:
                output = work(*again)
            task.loss(output, index).backward()
        finally:
            tracer.detach()
            work.zero_grad(set_to_none=True)
        if tracer.backward_origin is not None:
            m.non_finite = tracer.backward_origin
            return
        for name, p in reversed(list(work.named_parameters())):
            if p.grad is not None and not all_finite(p.grad):
                module, _, _ = name.rpartition(".")
                m.non_finite = OpEvent(f"gradient of `{name}`", module, None, math.inf, phase="backward")
                return
    m.non_finite = OpEvent("the model's forward", "", None, math.inf, detail=f"non-finite {where}; no single op could be named")


# --- stages 2 and 3: mixed precision and clipping ---------------------------------------------------------------
def _precision(work: nn.Module, task: Task, m: Measurements, config: dict[str, Any], step_norms: list[float]) -> None:
    device_type = model_device(work).type
    dtype = precision.autocast_dtype(device_type)
    if dtype is None:
        m.notes.append(f"mixed-precision probe skipped: no autocast dtype for device {device_type!r}")
        return
    if m.precision is None:
        m.precision = Precision(autocast_dtype=_dtype_name(dtype))
    seed = int(config["probe-seed"])
    precision.compare(work, task, m.precision, device_type, float(config["amp-tolerance"]), seed)
    work.train(m.mode == "train")
    steps = precision.amp_steps(dtype, int(config["probe-steps"]))
    step_norms += precision.train_steps(work, task, m.precision, device_type, steps, _clip_threshold(config) or 1.0, seed)


def _clip_threshold(config: dict[str, Any]) -> float | None:
    return float(config["clip-norm"]) if float(config["clip-norm"]) > 0 else None


# --- helpers ----------------------------------------------------------------------------------------------------
def _loss_name(loss: Any) -> str:
    """How the probe summary names a given loss: `training_step`, `focal` (from `focal_loss`), else "given"."""
    name = getattr(loss, "__name__", "").removesuffix("_loss")
    return name if name.isidentifier() else "given"


def _requiring_grad(batch: tuple[Any, ...]) -> tuple[Any, ...]:
    """Float inputs as non-leaf tensors that require grad: the gradient reaching the data is measured, and a
    model that modifies its input in place still can."""
    return tuple(t.detach().requires_grad_(True).clone() if _is_float(t) else t for t in batch)


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _in_float32(work: nn.Module) -> str | None:
    """A working copy whose weights are float16/bfloat16 (`model.half()`, a bf16 checkpoint) converted to
    float32, so that the probes' float32 passes, and their findings, do not depend on the dtype the model is
    kept in; the low precision's name, or None when there was nothing to convert."""
    low = sorted({str(t.dtype).replace("torch.", "") for t in [*work.parameters(), *work.buffers()] if t.dtype in _LOW_PRECISION})
    if not low:
        return None
    work.float()
    return " and ".join(low)


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else ""
