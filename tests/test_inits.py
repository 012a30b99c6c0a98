"""The init record (auditor/loading/inits.py) against the values: the same build, once with real weights (read
as the rules read them) and once on meta (the recorded init calls), must tell the init rules the same things;
what the record cannot follow it must call unknown, with the reason and the line, never guess."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from auditor.graph.inits import Measured
from auditor.loading.inits import InitRecorder


def built_both_ways(build):
    """(a real build, a meta build, the meta build's init record) of the module `build()` returns."""
    torch.manual_seed(0)
    real = build()
    recorder = InitRecorder()
    with recorder.recording():
        meta = build()
    record = recorder.record(meta)
    return real, meta, record


def _linear(init):
    def build():
        layer = nn.Linear(256, 512)
        init(layer.weight)
        return layer

    return build


def _timm_trunc_normal(w, mean=0.0, std=0.5, a=-0.6, b=0.9):
    """timm's truncated normal, written with tensor methods as timm.layers.weight_init does."""
    def cdf(x):
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    low, high = cdf((a - mean) / std), cdf((b - mean) / std)
    with torch.no_grad():
        w.uniform_(2 * low - 1, 2 * high - 1)
        w.erfinv_()
        w.mul_(std * math.sqrt(2.0))
        w.add_(mean)
        w.clamp_(min=a, max=b)


SPREADS = {
    "default Linear (kaiming_uniform_, a=sqrt(5))": _linear(lambda w: None),
    "normal_": _linear(lambda w: nn.init.normal_(w, std=0.02)),
    "uniform_": _linear(lambda w: nn.init.uniform_(w, -0.1, 0.3)),
    "trunc_normal_ (truncation matters)": _linear(lambda w: nn.init.trunc_normal_(w, std=0.5, a=-0.6, b=0.9)),
    "kaiming_normal_ fan_out": _linear(lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")),
    "xavier_uniform_ tanh gain": _linear(lambda w: nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain("tanh"))),
    "xavier_normal_": _linear(nn.init.xavier_normal_),
    "orthogonal_ gain 2": _linear(lambda w: nn.init.orthogonal_(w, gain=2.0)),
    "eye_": _linear(nn.init.eye_),
    "sparse_": _linear(lambda w: nn.init.sparse_(w, 0.5, std=0.1)),
    "Tensor.normal_ then mul_": _linear(lambda w: w.data.normal_(0, 0.02).mul_(3)),
    "uniform_ then clamp_ (replayed)": _linear(lambda w: (w.data.uniform_(-1, 1), w.data.clamp_(-0.5, 0.5))),
    "timm-style truncated normal (replayed)": _linear(_timm_trunc_normal),
    "values before registration": lambda: _with_parameter(lambda: nn.Parameter(torch.randn(128, 64) * 0.1)),
    "model.half() after init": lambda: _linear(lambda w: nn.init.normal_(w, std=0.05))().half(),
    "dirac_ on a conv": lambda: _conv(nn.init.dirac_),
}


def _with_parameter(make):
    module = nn.Module()
    module.weight = make()
    return module


def _conv(init):
    conv = nn.Conv2d(16, 32, 3)
    init(conv.weight)
    return conv


@pytest.mark.parametrize("name", SPREADS)
def test_recorded_spread_matches_the_values(name):
    real, meta, record = built_both_ways(SPREADS[name])
    init = record.init_of(meta.weight)
    assert init is not None, record.unknown
    std, mean = init.std_mean()
    measured_std, measured_mean = Measured(real.weight).std_mean()
    assert std == pytest.approx(measured_std, rel=0.03)
    assert mean == pytest.approx(measured_mean, abs=0.03 * measured_std + 1e-3)
    assert meta.weight.is_meta and not real.weight.is_meta


def test_constants_identical_units_and_padding_rows_as_the_values_say():
    def build():
        model = nn.Module()
        model.embed = nn.Embedding(20, 8, padding_idx=0)
        model.zeroed = nn.Embedding(20, 8, padding_idx=3)
        nn.init.zeros_(model.zeroed.weight)
        model.fc = nn.Linear(8, 16)
        model.fc.weight.data.fill_(0.05)
        model.conv = nn.Conv1d(8, 8, 3)
        with torch.no_grad():
            model.conv.weight.copy_(model.conv.weight[:1].expand_as(model.conv.weight))
        model.head = nn.Linear(16, 3)
        return model

    real, meta, record = built_both_ways(build)
    for name in ("embed", "zeroed", "fc", "conv", "head"):
        measured, recorded = Measured(getattr(real, name).weight), record.init_of(getattr(meta, name).weight)
        padding = getattr(getattr(real, name), "padding_idx", None)
        assert _same(recorded.constant(1e-3, skip_row=padding), measured.constant(1e-3, skip_row=padding)), name
        assert recorded.identical_units(1e-3) == measured.identical_units(1e-3), name
    assert record.init_of(meta.fc.weight).constant(1e-3) == pytest.approx(0.05)
    assert record.init_of(meta.conv.weight).identical_units(1e-3) is True
    assert record.init_of(meta.embed.weight).constant(1e-3, skip_row=0) is None


def _same(a, b):
    return a == b if a is None or b is None else a == pytest.approx(b)


def test_gate_blocks_orthogonal_or_not_as_the_values_say():
    def build():
        model = nn.Module()
        model.default = nn.LSTM(8, 64)
        model.gates = nn.LSTM(8, 64)
        model.whole = nn.GRU(8, 64)  # orthogonal as a whole: its gate blocks are not
        model.drawn = nn.LSTM(8, 64)
        model.drawn.weight_hh_l0.data.normal_(0, 0.1)
        for block in model.gates.weight_hh_l0.data.chunk(4, dim=0):
            nn.init.orthogonal_(block)
        nn.init.orthogonal_(model.whole.weight_hh_l0)
        return model

    real, meta, record = built_both_ways(build)
    for name, blocks in (("default", 4), ("gates", 4), ("whole", 3), ("drawn", 4)):
        measured = Measured(getattr(real, name).weight_hh_l0).block_deviations(blocks)
        recorded = record.init_of(getattr(meta, name).weight_hh_l0).block_deviations(blocks)
        assert recorded == pytest.approx(measured, abs=0.15), name
    assert record.init_of(meta.gates.weight_hh_l0).block_deviations(4) == [0.0] * 4


def test_tied_weights_share_one_record():
    def build():
        model = nn.Module()
        model.embed = nn.Embedding(100, 32)
        model.head = nn.Linear(32, 100, bias=False)
        model.head.weight = model.embed.weight
        nn.init.normal_(model.embed.weight, std=0.02)
        return model

    _, meta, record = built_both_ways(build)
    assert meta.head.weight is meta.embed.weight
    assert record.init_of(meta.head.weight).std_mean() == pytest.approx((0.02, 0.0))


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda m: m.fc.weight.data.copy_(m.fc.weight.detach() * 2), "values copied in by Tensor.copy_"),
        (lambda m: m.fc.weight.data[:, :3].zero_(), "partly written by Tensor.zero_"),
        (lambda m: m.fc.weight.data.mul_(torch.ones(16, 8)), "changed by Tensor.mul_"),
        (lambda m: setattr(m.fc.weight, "data", torch.randn(16, 8, device=m.fc.weight.device)), "replaced through .data"),
    ],
    ids=["computed from weights", "columns", "tensor operand", "data assignment"],
)
def test_what_the_record_cannot_follow_is_unknown_with_the_line(write, reason):
    def build():
        model = nn.Module()
        model.fc = nn.Linear(8, 16)
        write(model)
        return model

    recorder = InitRecorder()
    with recorder.recording():
        meta = build()
    record = recorder.record(meta)
    assert record.init_of(meta.fc.weight) is None
    assert reason in record.unknown["fc.weight"]
    assert "test_inits.py:" in record.unknown["fc.weight"]


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
def test_loaded_values_are_measured_as_they_are_copied_in(tmp_path):
    path = tmp_path / "weights.pt"
    saved = nn.Linear(64, 32)
    nn.init.constant_(saved.weight, 0.25)
    torch.save(saved.state_dict(), path)

    def build():
        layer = nn.Linear(64, 32)
        layer.load_state_dict(torch.load(path))
        return layer

    _, meta, record = built_both_ways(build)
    assert record.init_of(meta.weight).constant(1e-3) == pytest.approx(0.25)
    assert record.init_of(meta.bias).std_mean() == pytest.approx(Measured(saved.bias).std_mean(), rel=1e-3)


def test_a_model_made_before_the_build_is_not_touched():
    existing = nn.Linear(4, 4)
    recorder = InitRecorder()
    with recorder.recording():
        wrapper = nn.Sequential(existing)
    assert not recorder.built_here(wrapper)
    assert not existing.weight.is_meta
