"""A merge that crashes the forward pass (a residual add of mismatched shapes, a skip concatenation of different
sizes) is a finding at that merge on every capture, not a failed target: the capture carries on with the operand
the rest of the model accepts, and when nothing lets the rest run, the graph up to the failure is audited."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from auditor.capture import capture
from auditor.capture.forward import ForwardFailure
from auditor.engine import run_graph_rules
from auditor.loading.sites import CreationSites
from support import options

CAPTURES = ("fx", "export", "hooks")
ADD_LINE: dict[str, int] = {}  # block kind -> the line of its add (`return ... + ...`), filled below


class Channels(nn.Module):
    """8 -> 16 channels without a projection shortcut; the next layer wants 16 channels."""

    def __init__(self, identity_first: bool, inplace: bool = False):
        super().__init__()
        self.identity_first, self.inplace = identity_first, inplace
        self.conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        out = self.bn(self.conv(x))
        if self.inplace:
            x += out
            return x
        return x + out if self.identity_first else out + x


class Stride(nn.Module):
    """Stride 2 without subsampling the identity: [B, 8, 8, 8] + [B, 8, 4, 4]."""

    def __init__(self, identity_first: bool):
        super().__init__()
        self.identity_first = identity_first
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        out = self.bn(self.conv(x))
        return x + out if self.identity_first else out + x


class Features(nn.Module):
    """An MLP block widening 8 -> 16 features, its sum normalized by LayerNorm(16) (the issue's 64 vs 128)."""

    def __init__(self, identity_first: bool):
        super().__init__()
        self.identity_first = identity_first
        self.fc = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        out = self.act(self.fc(x))
        return self.norm(x + out if self.identity_first else out + x)


def _line_of(function, text: str) -> int:
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if text in line)


ADD_LINE.update({block.__name__: _line_of(block.forward, "x + out if") for block in (Channels, Stride, Features)})
IN_PLACE_LINE = _line_of(Channels.forward, "x += out")


def _image_net(block: nn.Module, position: str) -> tuple[nn.Module, torch.Tensor]:
    """The bad block first (followed by layers that need its intended output) or last (before the head)."""
    wide = 8 if isinstance(block, Stride) else 16
    rest = [nn.Conv2d(wide, 8, 1), nn.ReLU()]
    body = [block, *rest] if position == "first" else [nn.Conv2d(8, 8, 1), nn.ReLU(), block]
    spatial = 4 if isinstance(block, Stride) else 8
    channels = (8 if position == "first" else wide) * spatial * spatial
    head = [nn.Flatten(), nn.Linear(channels, 3)]  # the head needs the branch's spatial size too
    return nn.Sequential(*body, *head), torch.randn(2, 8, 8, 8)


def _mlp(block: nn.Module, position: str) -> tuple[nn.Module, torch.Tensor]:
    body = [block, nn.Linear(16, 8)] if position == "first" else [nn.Linear(8, 8), nn.ReLU(), block]
    return nn.Sequential(*body, nn.Linear(16 if position == "last" else 8, 3)), torch.randn(2, 8)


def _findings(model: nn.Module, x: torch.Tensor, method: str):
    graph = capture(model, (x,), CreationSites().for_model(model), (method,))
    return graph, run_graph_rules(graph, options(select=["RES"]), [])


@pytest.mark.parametrize("method", CAPTURES)
@pytest.mark.parametrize("position", ["first", "last"])
@pytest.mark.parametrize("identity_first", [True, False], ids=["identity+branch", "branch+identity"])
@pytest.mark.parametrize("kind", ["Channels", "Stride", "Features"])
def test_a_crashing_residual_add_is_res001_at_the_add(kind, identity_first, position, method):
    block = globals()[kind](identity_first)
    model, x = (_mlp if kind == "Features" else _image_net)(block, position)
    graph, findings = _findings(model.eval(), x, method)
    assert graph.method == method and graph.stopped is None and graph.output is not None
    [finding] = findings
    assert finding.code == "RES001" and finding.line == ADD_LINE[kind] and finding.file.endswith("test_stepping_over.py")
    branch, identity = {
        "Channels": ("[2, 16, 8, 8]", "[2, 8, 8, 8]"),
        "Stride": ("[2, 8, 4, 4]", "[2, 8, 8, 8]"),
        "Features": ("[2, 16]", "[2, 8]"),
    }[kind]
    assert f"branch from {'BatchNorm2d' if kind != 'Features' else 'GELU'}" in finding.message
    assert branch in finding.message and identity in finding.message


@pytest.mark.parametrize("method", CAPTURES)
def test_an_in_place_residual_add_is_stepped_over_too(method):
    model = nn.Sequential(Channels(identity_first=True, inplace=True), nn.Conv2d(16, 4, 1))
    graph, findings = _findings(model.eval(), torch.randn(2, 8, 8, 8), method)
    assert [(f.code, f.line) for f in findings] == [("RES001", IN_PLACE_LINE)]
    assert graph.output is not None


class WrongBranch(nn.Module):
    """The branch is the wrong width (16 where the block keeps 8): the rest accepts the identity, not the branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 1)

    def forward(self, x):
        return self.conv(x) + x


@pytest.mark.parametrize("method", CAPTURES)
def test_the_other_operand_is_tried_when_the_rest_rejects_the_first_choice(method):
    model = nn.Sequential(WrongBranch(), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 16, 2)).eval()
    graph, findings = _findings(model, torch.randn(2, 8, 4, 4), method)
    assert graph.stopped is None and graph.output is not None
    assert [f.code for f in findings] == ["RES001"]
    assert graph.find("linear")[0].shape == (2, 2)


class BrokenAfterwards(nn.Module):
    """A crashing add, then a layer that rejects both operands: only the graph up to it can be audited."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(5, 2)  # wants 5 features; neither [.., 4] operand has them

    def forward(self, x):
        y = self.drop(self.conv(x)) + x
        return self.head(y.relu())


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_when_the_rest_cannot_run_the_graph_up_to_the_failure_is_audited(method):
    graph, findings = _findings(BrokenAfterwards().eval(), torch.randn(2, 8, 4, 4), method)
    assert graph.stopped is not None and graph.output is None
    assert "partial graph: the forward pass stopped at" in graph.stopped and "head" in graph.stopped
    assert graph.stopped in graph.notes
    assert [n.op for n in graph.nodes if n.kind != "input"] == ["conv", "dropout", "add", "relu"]
    assert [f.code for f in findings] == ["RES001"]


def test_export_leaves_a_partial_graph_to_hooks_in_the_default_chain():
    graph = capture(BrokenAfterwards().eval(), (torch.randn(2, 8, 4, 4),), {}, ("export", "hooks"))
    assert graph.method == "hooks" and graph.stopped is not None
    assert graph.notes[0].startswith("export: ")


class Crashing(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_a_model_that_fails_without_a_merge_is_still_a_forward_failure(method):
    with pytest.raises(ForwardFailure, match="mat1 and mat2"):
        capture(Crashing(), (torch.randn(2, 4),), {}, (method,))


class BadArgument(nn.Module):
    def forward(self, x):
        return torch.add(x, x, alpha="two")


def test_a_failing_add_of_compatible_shapes_is_not_stepped_over():
    """Only shape failures are merges to step over: any other error of an add is the model's own failure."""
    with pytest.raises(ForwardFailure, match="alpha"):
        capture(BadArgument(), (torch.randn(2, 4),), {}, ("hooks",))


def test_the_fx_failure_message_is_one_line():
    with pytest.raises(ForwardFailure) as caught:
        capture(Crashing(), (torch.randn(2, 4),), {}, ("fx",))
    assert "\n" not in str(caught.value)


class Fake(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 1)

    def forward(self, x):
        return F.relu(x + self.conv(x))


def test_stepping_over_works_on_fake_tensors():
    """The stand-ins are plain torch ops: a capture fed fake tensors (shapes without data) steps over alike."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from auditor.capture.fx import capture_traced, trace

    model = Fake().eval()
    gm = trace(model, 1)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        graph = capture_traced(gm, (mode.from_tensor(torch.randn(2, 8, 4, 4)),), {}, model)
    [add] = graph.find("add")
    assert add.error == "operands of shapes [2, 8, 4, 4] and [2, 16, 4, 4] cannot be combined"
    assert add.shape == (2, 16, 4, 4)


class Decoder(nn.Module):
    """One U-Net level: upsample, concatenate with the skip (in either order), convolve."""

    def __init__(self, channels: int, skip_first: bool):
        super().__init__()
        self.skip_first = skip_first
        self.up = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1)

    def forward(self, x, skip):
        up = self.up(x)
        return self.conv(torch.cat([skip, up] if self.skip_first else [up, skip], dim=1))


CAT_LINE = _line_of(Decoder.forward, "torch.cat")


class TwoLevelUNet(nn.Module):
    """Odd sizes at both levels (11 -> 5 -> 2 -> 4 vs 5 -> 10 vs 11): the first concatenation fails, and so would
    the second; a head that needs the input's size follows."""

    def __init__(self, skip_first: bool):
        super().__init__()
        self.enc1, self.enc2, self.mid = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.dec2, self.dec1 = Decoder(4, skip_first), Decoder(4, skip_first)
        self.head = nn.Linear(11, 2)  # reads the last dim: only the skip's size lets it run

    def forward(self, x):
        s1 = self.enc1(x)
        s2 = self.enc2(F.max_pool2d(s1, 2))
        y = self.mid(F.max_pool2d(s2, 2))
        return self.head(self.dec1(self.dec2(y, s2), s1))


@pytest.mark.parametrize("method", CAPTURES)
@pytest.mark.parametrize("skip_first", [True, False], ids=["skip,up", "up,skip"])
def test_a_crashing_skip_concatenation_is_res004_at_the_cat(skip_first, method):
    graph, findings = _findings(TwoLevelUNet(skip_first).eval(), torch.randn(2, 3, 11, 11), method)
    assert graph.stopped is None and graph.find("linear")[0].shape == (2, 4, 11, 2)
    assert [(f.code, f.line, f.module) for f in findings] == [("RES004", CAT_LINE, "dec2"), ("RES004", CAT_LINE, "dec1")]
    assert "[2, 4, 5, 5]" in findings[0].message and "[2, 4, 4, 4]" in findings[0].message
    assert "their spatial sizes" in findings[1].message and "[2, 4, 11, 11]" in findings[1].message


def test_a_concatenation_that_fails_on_ranks_is_the_models_failure():
    class Ranks(nn.Module):
        def forward(self, x):
            return torch.cat([x, x.flatten(1)], 1)

    with pytest.raises(ForwardFailure, match="cat"):
        capture(Ranks(), (torch.randn(2, 3, 4),), {}, ("hooks",))


def test_a_partial_graph_is_an_audited_target_that_says_where_it_stopped():
    """Status ok with the findings up to the failure, and a note people see without --verbose."""
    import json

    from support import FIXTURES, cli, invoke

    model = FIXTURES / "models" / "partial_graph.py"
    text = cli(str(model))
    assert text.returncode == 1, text.stderr
    assert "note: partial graph: the forward pass stopped at `nn.Linear` in `head`" in text.stdout
    assert "partial_graph.py:14 error RES001" in text.stdout and "audit: error" not in text.stderr
    # the other formats of the same audit: in this process (the command's code, without a new interpreter)
    document = json.loads(invoke(str(model), "--format", "json").stdout)
    [result] = [r for r in document["results"] if r["capture"]]
    assert result["status"] == "ok" and [f["code"] for f in result["findings"]] == ["RES001"]
    assert any(n.startswith("partial graph: ") for n in result["capture"]["notes"])
    github = invoke(str(model), "--format", "github").stdout.splitlines()
    assert github[0].startswith("::warning title=audit::") and "partial graph" in github[0]
