"""PyTorch Lightning: `Trainer(callbacks=[AuditCallback()])` audits the LightningModule before it trains.

    from auditor.integrations.lightning import AuditCallback

    trainer = Trainer(callbacks=[AuditCallback(fail_on="warning", probe=True)])
    trainer.fit(model, datamodule)   # raises AuditFailed before the first optimizer step on a faulty model

The audit runs once per fit, on the batch the first `training_step` receives (on its device, after the sanity
validation): it becomes the forward's inputs by the rule of `auditor.integrations.batches` (an `(x, y)` batch
gives `x` to `forward(x)`; a dict batch fills the forward's parameters by name), or by `inputs=batch -> inputs`.
With `probe=True` the probes use the module's own `training_step` loss on that batch where it can be replayed
(the step calls the model once and returns the loss), else their surrogate loss, with a note. The report is
printed on the main process and the counts (with probes, the measured numbers) go to the trainer's loggers.

In a distributed run the model is audited once, on rank 0, and its report is broadcast: every process raises
AuditFailed on a failing model (none trains on alone). Under the spawn-based strategies (`ddp_spawn`,
`ddp_fork`, `ddp_notebook`) training runs in processes Lightning starts: rank 0 hands its report to the process
that called `fit` (`handoff.py`), which raises AuditFailed itself (instead of torch's `ProcessRaisedException`)
and has the report in `callback.report`. `trainer.validate()`, `test()` or `predict()` alone audit nothing,
and say so once on stderr.
Needs `lightning` (or the older `pytorch_lightning`): `pip install auditor[lightning]`.
"""

from __future__ import annotations

from typing import Any, Callable

from auditor.errors import TargetError
from auditor.findings import Report
from auditor.integrations.handoff import Handoff
from auditor.integrations.training import AuditFailed, StepLoss, TrainingAudit, metrics

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - the pre-2.0 package name
    try:
        from pytorch_lightning import Callback, LightningModule, Trainer
    except ImportError:
        raise ImportError("auditor.integrations.lightning needs PyTorch Lightning: pip install 'auditor[lightning]'") from None

__all__ = ["AuditCallback", "AuditFailed"]


class AuditCallback(TrainingAudit, Callback):
    """`AuditCallback(fail_on="error", probe=False, select=None, ignore=None, *, inputs=None)`: audit the
    LightningModule on its first training batch; raise AuditFailed (the findings in its message) when one is at
    or above `fail_on`. `report` holds the last audit's Report."""

    _pending = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._report: Report | None = None
        self._handoff = Handoff()
        super().__init__(*args, **kwargs)

    @property
    def report(self) -> Report | None:
        received = self._handoff.receive()  # in the process that called fit: what a spawned rank 0 found
        if received is not None:
            self._report = received
        return self._report

    @report.setter
    def report(self, value: Report | None) -> None:
        self._report = value

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = True

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._pending:
            return
        self._pending = False
        report = _on_rank_zero(trainer, lambda: self.audit_batch(pl_module, batch, StepLoss(lambda copy: copy.training_step(batch, batch_idx), "training_step")))
        self.report = report
        if trainer.is_global_zero:
            self._handoff.send(report)
        for logger in trainer.loggers:
            logger.log_metrics(metrics(report), step=trainer.global_step)
        self.finish(report, type(pl_module).__name__, show=trainer.is_global_zero)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """In the process that called `fit` under a spawn-based strategy: a worker stopped the run for the audit;
        raise its AuditFailed here, where the caller catches it."""
        received = self._handoff.receive()
        if received is None or isinstance(exception, AuditFailed):
            return
        self._report = received
        failed = self.failure(received, type(pl_module).__name__)
        if failed is not None:
            raise failed from exception

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._alone(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._alone(trainer)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._alone(trainer)

    def _alone(self, trainer: Trainer) -> None:
        fn = str(getattr(trainer.state.fn, "value", trainer.state.fn))
        if fn != "fit":
            self.nothing_audited(f"trainer.{fn}()", show=trainer.is_global_zero)


def _on_rank_zero(trainer: Trainer, audit: Callable[[], Report]) -> Report:
    """The audit's report, computed on rank 0 only and broadcast to every rank of a distributed run; an audit
    that fails there fails on every rank."""
    if trainer.world_size <= 1:
        return audit()
    verdict: tuple[str, Any] | None = None
    if trainer.is_global_zero:
        try:
            verdict = ("report", audit())
        except Exception as exc:  # noqa: BLE001 - every rank must reach the broadcast, and raise it after
            verdict = ("error", f"{type(exc).__name__}: {exc}")
    kind, value = trainer.strategy.broadcast(verdict, src=0)
    if kind == "error":
        raise TargetError(f"the audit failed on rank 0: {value}")
    return value
