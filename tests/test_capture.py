"""The three captures produce the same graph abstraction, and the fallback chain picks the first that works."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from auditor.capture import capture
from auditor.graph import CALL, MODULE
from auditor.loading.sites import CreationSites
from support import FIXTURES, model_results, run

MODELS = FIXTURES / "models"


class Block(nn.Module):
    def __init__(self, channels_in=4, stride=2):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, 8, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        y = F.dropout(y, 0.1, self.training)
        y.sigmoid_()
        return y + x  # channels 4 -> 8 (and stride 2 by default): a mismatched residual


def _summary(graph):
    """What rules see, capture-independent: (kind, op, module) for modules and calls."""
    return [(n.kind, n.op, n.module) for n in graph.nodes if n.kind in (MODULE, CALL)]


@pytest.mark.parametrize("method", ["fx", "export", "hooks"])
def test_each_capture_sees_modules_functionals_and_inplace_ops(method):
    model = Block(channels_in=8, stride=1)
    sites = CreationSites().for_model(model)
    graph = capture(model, (torch.randn(2, 8, 8, 8),), sites, (method,))
    assert graph.method == method
    assert _summary(graph) == [
        ("module", "conv", "conv"),
        ("module", "batch_norm", "bn"),
        ("module", "relu", "act"),
        ("call", "dropout", ""),
        ("call", "sigmoid", ""),
        ("call", "add", ""),
    ]
    add = graph.find("add")[0]
    sigmoid = graph.find("sigmoid")[0]
    assert sigmoid.inplace and add.inputs[0] is sigmoid  # the add reads the in-place result
    conv = graph.find("conv")[0]
    assert conv.shape == (2, 8, 8, 8) and conv.line == 21 and conv.file.endswith("test_capture.py")
    assert add.line == 29 and set(conv.params) == {"weight", "bias"}


@pytest.mark.parametrize("method", ["fx", "export", "hooks"])
def test_a_mismatched_add_is_recorded_at_the_add_and_the_pass_goes_on(method):
    graph = capture(Block(), (torch.randn(2, 4, 8, 8),), {}, (method,))
    add = graph.find("add")[0]
    assert add.error == "operands of shapes [2, 8, 4, 4] and [2, 4, 8, 8] cannot be combined"
    assert add.shape == (2, 8, 4, 4) and add.line == 29
    assert [i.op for i in add.tensor_inputs] == ["sigmoid", "input"] and add.users == [graph.output]


def test_capture_restores_training_mode_and_leaves_weights_alone():
    model = Block().train()
    model.bn.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    capture(model, (torch.randn(2, 4, 8, 8),), {}, ("fx",))
    assert model.training and not model.bn.training and model.conv.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fx_failure_falls_back_to_one_eager_pass_with_a_note():
    """torch.export is not tried when the eager pass settles the graph: it would trace the same forward again."""
    [result] = model_results(run(MODELS / "shape_checks.py", inputs=["2,3,8,8"]))
    assert result.capture.method == "hooks"
    assert [n.split(":")[0] for n in result.capture.notes] == ["fx"]
    assert result.capture.notes[0].startswith("fx: TraceError")
    assert [(f.code, f.line) for f in result.findings] == [("DRO001", 10)]


def test_data_dependent_control_flow_falls_back_to_hooks():
    [result] = model_results(run(MODELS / "data_dependent.py"))
    assert result.capture.method == "hooks"
    assert [n.split(":")[0] for n in result.capture.notes] == ["fx"]
    assert [(f.code, f.line) for f in result.findings] == [("DRO001", 11)]


class _Cache:
    """Keys kept for the next call: an object torch's pytree does not know (Hugging Face's EncoderDecoderCache)."""

    def __init__(self, keys):
        self.keys = keys


class CachingDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.key = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.1)
        self.act = nn.ReLU()

    def forward(self, x):
        keys = self.key(x)
        return self.act(self.drop(keys)), _Cache(keys)


def test_export_reads_the_tensors_of_an_output_it_cannot_flatten():
    model = CachingDecoder()
    graph = capture(model, (torch.randn(2, 8),), {}, ("export",))
    assert [(n.op, n.module) for n in graph.nodes if n.kind == MODULE] == [("linear", "key"), ("dropout", "drop"), ("relu", "act")]
    assert "forward" not in vars(model)


def test_transformer_layers_are_single_opaque_nodes_on_every_capture():
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 2, 32, batch_first=True))
    for method in ("fx", "export", "hooks"):
        graph = capture(model, (torch.randn(2, 5, 8),), {}, (method,))
        assert [(n.op, n.module) for n in graph.nodes if n.kind == MODULE] == [("linear", "0"), ("opaque", "1")], method
