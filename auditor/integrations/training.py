"""What both training callbacks do at the start of training: audit the model on the first real batch, print the
report, hand the numbers to a logger, and stop the run when a finding is at or above `fail_on`."""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn

from auditor.findings import Report, Severity
from auditor.gate import failure_message, threshold


class AuditFailed(RuntimeError):
    """Raised by a training callback to stop the run: the message lists the findings; `report` has them all."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


class TrainingAudit:
    """The base of both callbacks: their arguments and what they do with a batch. `fail_on` is checked when the
    callback is built, so a typo fails before any training starts. `inputs(batch)`: the caller's own split of a
    batch into forward inputs (see `batches.forward_inputs`). `report`: the last audit's Report."""

    def __init__(
        self,
        fail_on: str | Severity = "error",
        probe: bool = False,
        select: Iterable[str] | None = None,
        ignore: Iterable[str] | None = None,
        *,
        inputs: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        self.fail_on = threshold(fail_on)
        self.probe = probe
        self.select = list(select) if select is not None else None
        self.ignore = list(ignore) if ignore is not None else None
        self.inputs = inputs
        self.report: Report | None = None

    def audit_batch(self, model: nn.Module, batch: Any, loss: Callable[[nn.Module, Any], torch.Tensor] | None = None) -> Report:
        """Audit `model` on the forward inputs in `batch` (`loss`: the probes' training loss, with probe=True)."""
        from auditor.api import audit
        from auditor.integrations.batches import forward_inputs

        inputs = forward_inputs(model, batch, self.inputs)
        self.report = audit(model, inputs, probe=self.probe, select=self.select, ignore=self.ignore, loss=loss if self.probe else None)
        return self.report

    def finish(self, report: Report, subject: str, *, show: bool = True) -> None:
        """Raise AuditFailed when a finding is at or above `fail_on` (its message is the report of those);
        else print the report (`show`: on one process of a distributed run) and let training go on."""
        from auditor.report.text import render

        failed = self.failure(report, subject)
        if failed is not None:
            raise failed
        if show:
            sys.stdout.write(f"auditor: {subject} on the first training batch\n{render(report)}")
            sys.stdout.flush()

    def failure(self, report: Report, subject: str) -> AuditFailed | None:
        """The AuditFailed that stops the run, when a finding is at or above `fail_on`."""
        message = failure_message(report, self.fail_on, subject)
        if message is None:
            return None
        return AuditFailed(f"{message}\n(the audit stopped the run: fix the model, or pass fail_on= or ignore= to the callback)", report)

    def nothing_audited(self, ran: str, *, show: bool = True) -> None:
        """Say once, on stderr, that a run without training (`Trainer.evaluate()` alone) audited nothing: the
        callback audits on the first training batch, and a silent evaluation would read as a clean model."""
        if self.report is not None or getattr(self, "_said_nothing", False) or not show:
            return
        self._said_nothing = True
        sys.stderr.write(f"auditor: nothing was audited: {ran} ran without training, and AuditCallback audits the model on "
                         "the first training batch (auditor.audit(model, inputs) audits it outside training)\n")
        sys.stderr.flush()


class StepLoss:
    """The user's own training step as the probes' loss (`auditor.audit(loss=...)`): `step(model)` runs on the
    probes' copy of the model while its forward answers with the output the probe just computed, so the loss
    is the user's and its gradient flows through the watched forward. The step must call the model exactly once
    and return the loss (a tensor, or a mapping with "loss"); anything else is an error, after which the probes
    fall back to their surrogate loss and say why."""

    def __init__(self, step: Callable[[nn.Module], Any], name: str) -> None:
        self.step = step
        self.__name__ = name

    def __call__(self, model: nn.Module, output: Any) -> torch.Tensor:
        calls = 0

        def replay(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return output

        model.forward = replay  # an instance attribute shadows the class's forward, for this step only
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. Lightning's self.log() without a trainer on the copy
                result = self.step(model)
        finally:
            del model.forward
        if calls != 1:
            raise RuntimeError(f"{self.__name__} called the model {calls} times, not once")
        loss = result.get("loss") if isinstance(result, Mapping) else result
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"{self.__name__} returned {type(result).__name__}, not a loss tensor")
        return loss


def metrics(report: Report) -> dict[str, float]:
    """Numbers for a training logger: finding counts, and with probes the per-layer gradient norms and
    activation scales, the autocast error, the largest activation and the recommended clip norm."""
    values: dict[str, float] = {f"audit/{level}": float(report.count(level)) for level in Severity}
    for result in report.results:
        probes = result.probes
        for layer in probes.get("layers", []):
            for name in ("grad_norm", "act_std"):
                _put(values, f"audit/{name}/{layer['module'] or 'root'}", layer.get(name))
        _put(values, "audit/output_std", probes.get("output_std"))
        precision = probes.get("precision") or {}
        _put(values, "audit/autocast_error", precision.get("autocast_error"))
        _put(values, "audit/max_abs_activation", precision.get("max_abs"))
        _put(values, "audit/clip_norm_recommended", (probes.get("clipping") or {}).get("recommended"))
    return values


def _put(values: dict[str, float], name: str, value: Any) -> None:
    """JSON probe numbers are floats, or "inf"/"nan" strings; None means not measured."""
    if value is None:
        return
    number = float(value)
    if not math.isnan(number):
        values[name] = number
