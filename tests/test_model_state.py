"""Each capture attempt starts from the model as the user built it, and the audit leaves the process's random
streams as it found them."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

import auditor
from auditor.capture.state import ModuleState, restored
from support import FIXTURES, run

INPUTS = FIXTURES / "inputs"


@pytest.mark.parametrize("capture", [("fx", "export", "hooks"), ("hooks",)])
def test_a_forward_that_caches_on_its_module_survives_failed_attempts(capture):
    """Llama 2's `self.freqs_cis = self.freqs_cis.to(h.device)`: fx tracing stores a Proxy there, then fails."""
    [result] = [r for r in run(INPUTS / "cached_table.py", capture=capture).results if ":" in r.target]
    assert result.status == "ok", result.error
    assert result.capture.method == "hooks"


def test_the_users_model_keeps_real_tensors_after_the_audit():
    sys.path.insert(0, str(INPUTS))
    try:
        from cached_table import CachedTable
    finally:
        sys.path.remove(str(INPUTS))
    model = CachedTable()
    table = model.table
    auditor.audit(model)
    assert type(model.table) is torch.Tensor and torch.equal(model.table, table)
    assert model._buffers["table"] is model.table


def test_restored_puts_back_attributes_buffers_children_and_lazy_classes():
    model = nn.Sequential(nn.LazyLinear(3))
    model.register_buffer("seen", torch.zeros(1))
    with restored(model):
        model(torch.randn(2, 5))  # materializes the lazy layer (its class changes)
        model.seen = torch.ones(1)
        model.extra = nn.ReLU()
        model.note = "written by forward"
    assert type(model[0]) is nn.LazyLinear and not hasattr(model, "note") and "extra" not in model._modules
    assert torch.equal(model.seen, torch.zeros(1))
    state = ModuleState(model)
    model[0] = nn.Identity()
    state.restore()
    assert type(model[0]) is nn.LazyLinear


def test_auditing_without_inputs_leaves_the_global_random_streams_alone():
    class VAE(nn.Module):  # the forward draws from the global generator
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(8, 4)
            self.dec = nn.Linear(2, 8)

        def forward(self, x):
            mu, logvar = self.enc(x).chunk(2, -1)
            return self.dec(mu + torch.randn_like(mu) * (0.5 * logvar).exp())

    model = VAE()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    auditor.audit(model)
    assert torch.equal(torch.rand(3), expected)


class RecordsStageOutputs(nn.Module):
    """Hugging Face's output recording: forward hooks installed on the first call, the model marked as hooked,
    and a head over every recorded stage output (SegFormer's decode head)."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Linear(4, 6), nn.Linear(6, 8)])
        self.heads = nn.ModuleList([nn.Linear(6, 2), nn.Linear(8, 2)])

    def forward(self, x):
        if not getattr(self, "hooked", False):
            for stage in self.stages:
                stage.register_forward_hook(lambda module, args, out: self.recorded.append(out))
            self.hooked = True
        self.recorded = []
        for stage in self.stages:
            x = stage(x).relu()
        return sum(head(h) for head, h in zip(self.heads, self.recorded))


def test_hooks_a_forward_registers_are_undone_with_its_mark():
    """Put back without its hooks, the mark 'hooked' went away and the hooks stayed: the next call installed
    them again and recorded every stage twice (the head then met a stage output of the wrong width)."""
    model = RecordsStageOutputs()
    x = torch.randn(3, 4)
    with restored(model):
        model(x)
    assert not hasattr(model, "hooked") and not any(stage._forward_hooks for stage in model.stages)
    expected = model(x)
    report = auditor.audit(model)
    assert [r.status for r in report.results] == ["ok"], [r.error for r in report.results]
    assert torch.equal(model(x), expected) and len(model.recorded) == 2


class DemandsTargetsInTraining(nn.Module):
    """torchvision's detection models: fx and export cannot capture the forward (control flow on values), and in
    training mode it demands targets."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        torch._assert(not self.training, "targets should not be none when in training mode")
        y = self.bn(self.conv(x)).relu()
        return y * 2 if y.sum() > 0 else y


def test_attempts_after_a_failed_one_still_run_in_eval_mode():
    """Putting a failed attempt's traces back also put back the training flag saved before eval mode: the hooks
    capture of Faster R-CNN then ran in training mode (and a BatchNorm would update its running statistics)."""
    model = DemandsTargetsInTraining().train()
    running = model.bn.running_mean.clone()
    [result] = auditor.audit(model, torch.randn(2, 3, 8, 8)).results
    assert result.status == "ok", result.error
    assert result.capture.method == "hooks"
    assert model.training and torch.equal(model.bn.running_mean, running)
