"""Hugging Face Trainer: `Trainer(..., callbacks=[AuditCallback()])` audits the model before it trains.

    from auditor.integrations.transformers import AuditCallback

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[AuditCallback(fail_on="warning")])
    trainer.train()   # raises AuditFailed at on_train_begin on a faulty model

At `on_train_begin` the first batch of the train dataloader (the collated dict, `labels` included) fills the
model's forward parameters by name. The batch is drawn from the underlying DataLoader with every random state
saved and restored, so training sees the same batches as without the callback. With `probe=True` the probes
use the model's own loss on the batch's labels (what `Trainer.compute_loss` uses unless you override it).
`trainer.evaluate()` or `trainer.predict()` without `train()` audits nothing, and says so once on stderr.
Needs `transformers` and `accelerate`: `pip install auditor[transformers]`.
"""

from __future__ import annotations

from typing import Any, Mapping

from auditor.integrations.training import AuditFailed, TrainingAudit

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:  # pragma: no cover - exercised without transformers only
    raise ImportError("auditor.integrations.transformers needs transformers: pip install 'auditor[transformers]'") from None

__all__ = ["AuditCallback", "AuditFailed"]


class AuditCallback(TrainingAudit, TrainerCallback):
    """`AuditCallback(fail_on="error", probe=False, select=None, ignore=None, *, inputs=None)`: audit the model
    on the first training batch at `on_train_begin`; raise AuditFailed (the findings in its message) when one is
    at or above `fail_on`. `report` holds the last audit's Report."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None or train_dataloader is None:
            raise RuntimeError("auditor: the Trainer passed no model or train dataloader to on_train_begin")
        report = self.audit_batch(model, first_batch(model, train_dataloader), model_loss)
        self.finish(report, type(model).__name__, show=state.is_world_process_zero)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.nothing_audited("Trainer.evaluate()", show=state.is_world_process_zero)

    def on_predict(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.nothing_audited("Trainer.predict()", show=state.is_world_process_zero)


def first_batch(model: Any, dataloader: Any) -> Any:
    """The first collated batch of the dataloader Accelerate wraps (its own iterator would register with the
    gradient-accumulation state), drawn with the random states restored afterwards."""
    from auditor.probes.isolation import preserved

    base = getattr(dataloader, "base_dataloader", dataloader)
    with preserved(model):
        return next(iter(base))


def model_loss(model: Any, output: Any) -> Any:
    """The loss the model computed from the batch's labels."""
    loss = output.get("loss") if isinstance(output, Mapping) else None
    if loss is None:
        raise ValueError("the model returned no loss (the batch has no labels)")
    return loss
