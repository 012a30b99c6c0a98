"""What the training callbacks build on, without Lightning or transformers: a batch split into forward inputs,
the user's own training step as the probes' loss (replayed on the probes' copy), and the logger's numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import auditor
from auditor.integrations.batches import forward_inputs
from auditor.integrations.training import AuditFailed, StepLoss, TrainingAudit, metrics


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        logits = self.out(self.embed(input_ids))
        if attention_mask is not None:
            logits = logits * attention_mask.unsqueeze(-1)
        return logits


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, mask, scale=1.0):
        return self.fc(x * mask) * scale


class Classifier(nn.Module):
    """A LightningModule's shape: forward(x), and a training_step that calls it once."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)
        self.steps = 0

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        self.steps += 1
        x, y = batch
        return {"loss": F.cross_entropy(self(x), y), "batch": batch_idx}


def test_a_dict_batch_fills_the_forward_parameters_by_name_and_leaves_other_keys_out() -> None:
    ids, mask, labels = torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6), torch.zeros(2, 6, dtype=torch.long)
    inputs = forward_inputs(Tagger(), {"input_ids": ids, "labels": labels, "attention_mask": mask, "text": ["a", "b"]})
    assert inputs[0] is ids and inputs[1] is mask and inputs[2] is None and inputs[3] is labels
    assert len(forward_inputs(Tagger(), {"input_ids": ids})) == 1  # no trailing defaults


def test_a_tuple_batch_gives_its_leading_items_to_the_required_parameters() -> None:
    x, mask, y = torch.randn(3, 4), torch.ones(3, 4), torch.zeros(3)
    assert forward_inputs(Classifier(), (torch.randn(3, 8), y)) [0].shape == (3, 8)
    assert len(forward_inputs(Classifier(), [torch.randn(3, 8), y])) == 1
    assert forward_inputs(TwoInputs(), (x, mask, y)) == (x, mask)
    tensor = torch.randn(3, 8)
    assert forward_inputs(Classifier(), tensor) == (tensor,)


def test_a_callers_own_split_gives_all_the_inputs() -> None:
    x, mask = torch.randn(3, 4), torch.ones(3, 4)
    batch = {"image": x, "mask": mask, "label": torch.zeros(3)}
    assert forward_inputs(TwoInputs(), batch, lambda b: (b["image"], b["mask"], 2.0)) == (x, mask, 2.0)
    assert forward_inputs(TwoInputs(), batch, lambda b: {"mask": b["mask"], "x": b["image"]}) == (x, mask)
    assert forward_inputs(Classifier(), batch, lambda b: b["image"]) == (x,)


@pytest.mark.parametrize(("batch", "message"), [
    ({"tokens": torch.zeros(1)}, "no key of the batch (tokens) names a parameter of the forward"),
    ({"attention_mask": torch.ones(1, 2)}, "the batch has no `input_ids` for the forward's required argument"),
    ((torch.zeros(1),), None),
    ("text", "a str batch cannot be split into forward inputs"),
])
def test_batches_that_cannot_be_split_say_why(batch, message) -> None:
    if message is None:  # one item for a forward that requires two
        with pytest.raises(ValueError, match="the batch has 1 item, the forward requires 2"):
            forward_inputs(TwoInputs(), batch)
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        forward_inputs(Tagger(), batch)


def test_the_training_step_is_the_probes_loss_on_a_copy() -> None:
    torch.manual_seed(0)
    model = Classifier()
    batch = (torch.randn(8, 8), torch.randint(0, 3, (8,)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = StepLoss(lambda copy: copy.training_step(batch, 0), "training_step")
    report = auditor.audit(model, batch[:1], probe=True, loss=step)
    probes = report.results[0].probes
    assert probes["loss"] == "training_step" and probes["notes"] == []
    assert model.steps == 0 and "forward" not in vars(model)  # the user's model never ran the step
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the measured gradients are those of the user's loss: cross-entropy on the batch's labels, not the surrogate's
    surrogate = auditor.audit(model, batch[:1], probe=True).results[0].probes
    assert surrogate["loss"] == "cross_entropy"
    assert probes["layers"][0]["grad_norm"] != surrogate["layers"][0]["grad_norm"]


def test_a_step_that_cannot_be_replayed_falls_back_to_the_surrogate_with_a_note() -> None:
    model = Classifier()
    batch = (torch.randn(8, 8), torch.randint(0, 3, (8,)))
    twice = StepLoss(lambda copy: copy(batch[0]).sum() + copy(batch[0]).sum(), "training_step")
    probes = auditor.audit(model, batch[:1], probe=True, loss=twice).results[0].probes
    assert probes["loss"] == "cross_entropy"
    assert probes["notes"] == ["the given training loss failed (training_step called the model 2 times, not once); probed with the surrogate cross_entropy loss"]
    nothing = StepLoss(lambda copy: None, "training_step")
    notes = auditor.audit(model, batch[:1], probe=True, loss=nothing).results[0].probes["notes"]
    assert "training_step called the model 0 times" in notes[0]


def test_a_plain_loss_function_names_itself() -> None:
    labels = torch.randint(0, 3, (4,))

    def focal_loss(model, output):
        return F.cross_entropy(output, labels)

    assert auditor.audit(Classifier(), torch.randn(4, 8), probe=True, loss=focal_loss).results[0].probes["loss"] == "focal"


def test_training_audit_raises_with_the_findings_at_or_above_fail_on(capsys) -> None:
    faulty = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 2))
    gate = TrainingAudit("warning")
    report = gate.audit_batch(faulty, torch.randn(4, 8))
    with pytest.raises(AuditFailed) as raised:
        gate.finish(report, "Sequential")
    assert "warning DRO001 [1]" in str(raised.value) and raised.value.report is report
    assert capsys.readouterr().out == ""  # the findings are in the exception, not printed twice
    TrainingAudit("error").finish(report, "Sequential")
    assert "auditor: Sequential on the first training batch" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown severity"):
        TrainingAudit("fatal")


def test_metrics_for_a_logger() -> None:
    report = auditor.audit(Classifier(), torch.randn(4, 8), probe=True)
    values = metrics(report)
    assert values["audit/error"] == 0.0 and values["audit/warning"] == 0.0
    assert values["audit/grad_norm/fc1"] > 0 and values["audit/act_std/fc2"] > 0
    assert all(isinstance(v, float) for v in values.values())
