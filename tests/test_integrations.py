"""The training callbacks in real runs: a Lightning fit and a Hugging Face Trainer run on CPU, stopped by a
dropout before its activation, and training normally (same weights as without the callback) on a clean model.

Opt-in: `pip install -e .[lightning,transformers]`, then `pytest tests/test_integrations.py --run-integrations`
(about a minute on a loaded 2-core machine).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytestmark = pytest.mark.integrations


def first_line_of(path: str, text: str) -> int:
    return next(i for i, line in enumerate(Path(path).read_text().splitlines(), 1) if text in line)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# --- PyTorch Lightning -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pl():
    return pytest.importorskip("lightning.pytorch")


try:  # a module-level class: ddp_spawn's workers unpickle the model by its class's import path
    import lightning.pytorch as _lightning

    class Classifier(_lightning.LightningModule):
        def __init__(self, faulty: bool = True) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.drop = nn.Dropout(0.3)
            self.act = nn.Tanh()
            self.fc2 = nn.Linear(32, 3)
            self.faulty = faulty

        def forward(self, x):
            h = self.fc1(x)
            h = self.act(self.drop(h)) if self.faulty else self.drop(self.act(h))
            return self.fc2(h)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)
except ImportError:
    pass


def lightning_module(pl, faulty: bool):
    torch.manual_seed(0)
    return Classifier(faulty)


def fit(pl, model, callbacks, tmp_path: Path, precision: str = "32-true"):
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 8, generator=generator), torch.randint(0, 3, (64,), generator=generator))
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        precision=precision,
    )
    torch.manual_seed(1)  # the same shuffling and dropout masks in every fit
    trainer.fit(model, DataLoader(data, batch_size=16, shuffle=True))
    return trainer


def test_lightning_fit_stops_on_dropout_before_activation(pl, tmp_path: Path) -> None:
    from auditor.integrations.lightning import AuditCallback, AuditFailed

    model = lightning_module(pl, faulty=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AuditFailed) as raised:
        fit(pl, model, [AuditCallback(fail_on="warning")], tmp_path)
    line = first_line_of(__file__, "self.drop = nn.Dropout(0.3)")
    message = str(raised.value)
    assert message.startswith("Classifier has 1 audit finding at or above warning:")
    assert f"test_integrations.py:{line} warning DRO001 [drop] Dropout `drop` feeds Tanh `act`" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # stopped before any step
    assert [f.code for f in raised.value.report.findings] == ["DRO001"]


def test_lightning_ddp_spawn_audits_on_rank_zero_and_raises_audit_failed_where_fit_was_called(pl, tmp_path: Path) -> None:
    """Under ddp_spawn the audit runs in the processes Lightning starts: rank 0 audits, every rank raises, and
    the process that called fit gets AuditFailed (not torch's ProcessRaisedException) and the report."""
    from torch.utils.data import DataLoader, TensorDataset

    from auditor.integrations.lightning import AuditCallback, AuditFailed

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 8, generator=generator), torch.randint(0, 3, (32,), generator=generator))
    callback = AuditCallback(fail_on="warning")
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], default_root_dir=str(tmp_path),
    )
    torch.manual_seed(0)
    with pytest.raises(AuditFailed) as raised:
        trainer.fit(Classifier(), DataLoader(data, batch_size=8))
    assert str(raised.value).startswith("Classifier has 1 audit finding at or above warning:")
    assert "warning DRO001 [drop] Dropout `drop` feeds Tanh `act`" in str(raised.value)
    assert [f.code for f in raised.value.report.findings] == ["DRO001"]
    assert callback.report is not None and [f.code for f in callback.report.findings] == ["DRO001"]


def test_lightning_validate_alone_says_once_that_nothing_was_audited(pl, tmp_path: Path, capsys) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from auditor.integrations.lightning import AuditCallback

    data = TensorDataset(torch.randn(16, 8), torch.randint(0, 3, (16,)))
    callback = AuditCallback()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback], default_root_dir=str(tmp_path))
    model = Classifier()
    trainer.validate(model, DataLoader(data, batch_size=8))
    trainer.validate(model, DataLoader(data, batch_size=8))
    err = capsys.readouterr().err
    assert err.count("auditor: nothing was audited: trainer.validate() ran without training") == 1
    assert callback.report is None


def test_lightning_default_fail_on_reports_the_warning_and_trains(pl, tmp_path: Path, capsys) -> None:
    from auditor.integrations.lightning import AuditCallback

    model = lightning_module(pl, faulty=True)
    trainer = fit(pl, model, [AuditCallback()], tmp_path)
    assert trainer.global_step == 4
    out = capsys.readouterr().out
    assert "auditor: Classifier on the first training batch" in out and "warning DRO001 [drop]" in out


def test_lightning_clean_model_trains_as_without_the_callback(pl, tmp_path: Path) -> None:
    from auditor.integrations.lightning import AuditCallback

    audited, plain = lightning_module(pl, faulty=False), lightning_module(pl, faulty=False)
    callback = AuditCallback(fail_on="warning", probe=True)
    trainer = fit(pl, audited, [callback], tmp_path / "audited")
    fit(pl, plain, [], tmp_path / "plain")
    assert trainer.global_step == 4
    assert same_weights(audited, plain)  # the audit and its probes changed neither the model nor the RNG
    result = callback.report.results[0]
    assert result.findings == [] and result.probes["loss"] == "training_step" and result.probes["notes"] == []
    [metrics_file] = (tmp_path / "audited").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    assert float(rows[0]["audit/grad_norm/fc1"]) > 0 and float(rows[0]["audit/warning"]) == 0


def test_lightning_module_whose_forward_takes_the_dict_batch_is_audited_on_it(pl, tmp_path: Path) -> None:
    """`forward(self, batch)` reading `batch["features"]`: the dict batch is the one argument, not split by key."""
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from auditor.integrations.lightning import AuditCallback, AuditFailed

    class DictClassifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 32)
            self.drop = nn.Dropout(0.3)
            self.act = nn.ReLU()
            self.out = nn.Linear(32, 3)

        def forward(self, batch):
            return self.out(self.act(self.drop(self.fc(batch["features"]))))

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self(batch), batch["labels"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    rows = [{"features": torch.randn(8), "labels": torch.tensor(i % 3)} for i in range(32)]
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[AuditCallback(fail_on="warning")])
    with pytest.raises(AuditFailed) as raised:
        trainer.fit(DictClassifier(), DataLoader(rows, batch_size=8))
    [result] = raised.value.report.results
    assert [f.code for f in result.findings] == ["DRO001"]
    assert [(r.name, r.spec) for r in result.capture.inputs] == [("batch", "dict")]


# --- Hugging Face Trainer ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("accelerate")
    return pytest.importorskip("transformers")


class FeatureClassifier(nn.Module):
    """A model as the Trainer takes it: keyword inputs, a dict with the loss when labels are given."""

    def __init__(self, faulty: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.drop = nn.Dropout(0.25)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, 3)
        self.faulty = faulty

    def forward(self, features, labels=None):
        h = self.fc1(features)
        h = self.act(self.drop(h)) if self.faulty else self.drop(self.act(h))
        logits = self.fc2(h)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class FeatureData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 8, generator=generator), torch.randint(0, 3, (32,), generator=generator)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "labels": self.y[i]}


class TokenData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids, self.y = torch.randint(0, 100, (32, 12), generator=generator), torch.randint(0, 3, (32,), generator=generator)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.y[i]}


def train(hf, model, data, callbacks, tmp_path: Path, **precision: bool):
    args = hf.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=1, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0, **precision,
    )
    trainer = hf.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train()
    return trainer


def test_trainer_run_stops_on_dropout_before_activation(hf, tmp_path: Path) -> None:
    from auditor.integrations.transformers import AuditCallback, AuditFailed

    torch.manual_seed(0)
    model = FeatureClassifier(faulty=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AuditFailed) as raised:
        train(hf, model, FeatureData(), [AuditCallback(fail_on="warning")], tmp_path)
    line = first_line_of(__file__, "self.drop = nn.Dropout(0.25)")
    message = str(raised.value)
    assert message.startswith("FeatureClassifier has 1 audit finding at or above warning:")
    assert f"test_integrations.py:{line} warning DRO001 [drop] Dropout `drop` feeds GELU `act`" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_trainer_run_of_a_clean_transformer_trains_as_without_the_callback(hf, tmp_path: Path) -> None:
    from auditor.integrations.transformers import AuditCallback

    config = hf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    audited = hf.BertForSequenceClassification(config)
    torch.manual_seed(0)
    plain = hf.BertForSequenceClassification(config)
    callback = AuditCallback(fail_on="warning", probe=True)
    trainer = train(hf, audited, TokenData(), [callback], tmp_path / "audited")
    train(hf, plain, TokenData(), [], tmp_path / "plain")
    assert trainer.state.global_step == 4
    assert same_weights(audited, plain)
    result = callback.report.results[0]
    assert result.status == "ok" and [f for f in result.findings if f.severity >= 2] == []
    assert result.probes["loss"] == "model"  # the model's own loss on the batch's labels


def test_trainer_evaluate_or_predict_alone_says_once_that_nothing_was_audited(hf, tmp_path: Path, capsys) -> None:
    from auditor.integrations.transformers import AuditCallback

    args = hf.TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=8, report_to=[], use_cpu=True, disable_tqdm=True)
    callback = AuditCallback()
    trainer = hf.Trainer(model=FeatureClassifier(faulty=True), args=args, eval_dataset=FeatureData(), callbacks=[callback])
    trainer.evaluate()
    trainer.evaluate()
    trainer.predict(FeatureData())
    err = capsys.readouterr().err
    assert err.count("auditor: nothing was audited:") == 1
    assert "auditor: nothing was audited: Trainer.evaluate() ran without training" in err
    assert callback.report is None


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainer_under_mixed_precision_finds_a_dropout_planted_in_bert(hf, precision: str, tmp_path: Path) -> None:
    """The Trainer's accelerate wraps the model's forward in autocast: the audit still sees every op inside."""
    from auditor.integrations.transformers import AuditCallback, AuditFailed

    config = hf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=32, num_labels=3)
    captured = {}
    for mode in (precision, "float32"):
        torch.manual_seed(0)
        model = hf.BertForSequenceClassification(config)
        model.bert.encoder.layer[1].intermediate.intermediate_act_fn = nn.Sequential(nn.Dropout(0.1), nn.GELU())
        with pytest.raises(AuditFailed) as raised:
            train(hf, model, TokenData(), [AuditCallback(fail_on="warning")], tmp_path / mode, **({precision: True} if mode == precision else {}))
        [finding] = raised.value.report.findings
        assert (finding.code, finding.module) == ("DRO001", "bert.encoder.layer.1.intermediate.intermediate_act_fn.0")
        captured[mode] = raised.value.report.results[0].capture
    # the whole model, as in float32, not the autocast region as one op
    assert captured[precision].nodes == captured["float32"].nodes > 60


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "16-true"])
def test_lightning_under_reduced_precision_audits_and_probes_as_in_float32(pl, precision: str, tmp_path: Path) -> None:
    from auditor.integrations.lightning import AuditCallback, AuditFailed

    with pytest.raises(AuditFailed) as raised:
        fit(pl, lightning_module(pl, faulty=True), [AuditCallback(fail_on="warning")], tmp_path / "faulty", precision=precision)
    assert [f.code for f in raised.value.report.findings] == ["DRO001"]
    callback = AuditCallback(fail_on="warning", probe=True)
    fit(pl, lightning_module(pl, faulty=False), [callback], tmp_path / "clean", precision=precision)
    result = callback.report.results[0]
    assert result.findings == [] and result.probes["loss"] == "training_step"
    converted = [n for n in result.probes["notes"] if "probed in float32" in n]
    assert bool(converted) == precision.endswith("-true")
