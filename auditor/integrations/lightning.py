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
Needs `lightning` (or the older `pytorch_lightning`): `pip install auditor[lightning]`.
"""

from __future__ import annotations

from typing import Any

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

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = True

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._pending:
            return
        self._pending = False
        report = self.audit_batch(pl_module, batch, StepLoss(lambda copy: copy.training_step(batch, batch_idx), "training_step"))
        for logger in trainer.loggers:
            logger.log_metrics(metrics(report), step=trainer.global_step)
        self.finish(report, type(pl_module).__name__, show=trainer.is_global_zero)
