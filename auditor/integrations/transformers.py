"""Hugging Face Trainer: `Trainer(..., callbacks=[AuditCallback()])` audits the model before it trains.

    from auditor.integrations.transformers import AuditCallback

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[AuditCallback(fail_on="warning")])
    trainer.train()   # raises AuditFailed at on_train_begin on a faulty model

At `on_train_begin` the first batch of the train dataloader (the collated dict, `labels` included) fills the
model's forward parameters by name. The batch is drawn from the underlying DataLoader with every random state
saved and restored, so training sees the same batches as without the callback. With `probe=True` the probes
use the model's own loss on the batch's labels (what `Trainer.compute_loss` uses unless you override it).
Needs `transformers` and `accelerate`: `pip install auditor[transformers]`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from auditor.findings import Severity
from auditor.integrations.batches import forward_inputs, to_device
from auditor.integrations.training import AuditFailed, TrainingAudit

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:  # pragma: no cover - exercised without transformers only
    raise ImportError("auditor.integrations.transformers needs transformers: pip install 'auditor[transformers]'") from None

__all__ = ["AuditCallback", "AuditFailed"]


class AuditCallback(TrainerCallback):
    """Audit the model on the first training batch at `on_train_begin`; raise AuditFailed (the findings in its
    message) when one is at or above `fail_on`. `report` holds the last audit's Report."""

    def __init__(
        self,
        fail_on: str | Severity = "error",
        probe: bool = False,
        select: Iterable[str] | None = None,
        ignore: Iterable[str] | None = None,
        *,
        inputs: Callable[[Any], Any] | None = None,
    ) -> None:
        self.audit = TrainingAudit(fail_on, probe, select, ignore)
        self.inputs = inputs
        self.report = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None or train_dataloader is None:
            raise RuntimeError("auditor: the Trainer passed no model or train dataloader to on_train_begin")
        batch = first_batch(model, train_dataloader)
        if self.inputs is not None:
            given = self.inputs(batch)
            inputs = to_device(given if isinstance(given, tuple) else (given,), model.device)
        else:
            inputs = forward_inputs(model, batch)
        self.report = self.audit.run(model, inputs, model_loss)
        self.audit.finish(self.report, type(model).__name__, show=state.is_world_process_zero)


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
