"""How the graph applies each weight (`auditor.graph.weights`): the fans the init rules judge a weight by come
from the op that applies it, in every capture, whatever module holds it; what cannot be judged is said."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import auditor
from auditor.api import live_model
from auditor.graph.weights import weight_uses
from auditor.prepare import capture_model

CAPTURES = ("fx", "export", "hooks")


def _uses(model: nn.Module, x: torch.Tensor, method: str) -> dict[str, tuple[str, int, int, float]]:
    loaded = live_model(model, (x,))
    graph = capture_model(loaded, [], (method,), loaded.example_inputs).graph
    assert graph.method == method
    uses, _ = weight_uses(graph)
    return {u.name: (u.layout, u.fan_in, u.fan_out, round(u.scale, 6)) for u in uses}


class Layouts(nn.Module):
    """One weight per layout: x @ w, x @ w.T, w @ x, F.linear on an expert's slice, addmm (GPT-2's Conv1D), F.conv2d,
    a transposed conv module, and a Linear whose input the forward scales by a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.right = nn.Parameter(torch.randn(12, 20))  # x @ right: 12 in, 20 out
        self.left = nn.Parameter(torch.randn(6, 5))  # left @ h: 5 in, 6 out
        self.experts = nn.Parameter(torch.randn(3, 8, 20))  # F.linear(h, experts[1]): 20 in, 8 out
        self.conv1d = nn.Parameter(torch.randn(8, 16))  # addmm(b, h, conv1d): 8 in, 16 out
        self.bias = nn.Parameter(torch.zeros(16))
        self.kernel = nn.Parameter(torch.randn(4, 1, 3, 3))  # F.conv2d: 1 * 9 in, 4 * 9 out
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)  # weight (4, 2, 2, 2): torch's fan-in 2 * 4, fan-out 4 * 4
        self.scaled = nn.Linear(16, 3)
        self.falcon = nn.Parameter(torch.randn(20, 12))  # x @ falcon.T (FalconLinear): 12 in, 20 out

    def forward(self, x):  # x: [5, 12]
        h = torch.relu(x @ self.right) + x @ self.falcon.T  # [5, 20]
        g = self.left @ h  # [6, 20]
        e = F.linear(g, self.experts[1])  # [6, 8]
        c = torch.addmm(self.bias, e, self.conv1d)  # [6, 16]
        image = F.conv2d(c.view(6, 1, 4, 4), self.kernel, padding=1)
        image = self.up(torch.relu(image))
        return image.mean() + self.scaled(c * 0.25).sum()


@pytest.mark.parametrize("method", CAPTURES)
def test_fans_follow_the_layout_the_op_reads(method: str) -> None:
    found = _uses(Layouts(), torch.randn(5, 12), method)
    assert found == {
        "right": ("matmul", 12, 20, 1.0),
        "falcon": ("matmul", 12, 20, 1.0),
        "left": ("matmul", 5, 6, 1.0),
        "experts": ("linear", 20, 8, 1.0),
        "conv1d": ("matmul", 8, 16, 1.0),
        "kernel": ("conv", 9, 36, 1.0),
        "up.weight": ("conv_transpose", 8, 16, 1.0),
        "scaled.weight": ("linear", 16, 3, 0.25),
    }


class Unjudgeable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.randn(16, 16))
        self.direction = nn.Parameter(torch.randn(8, 16))
        self.magnitude = nn.Parameter(torch.ones(8, 1))

    def forward(self, x):
        h = torch.einsum("bi,ij->bj", x, self.mix)
        weight = self.magnitude * self.direction / self.direction.norm(dim=1, keepdim=True)  # weight normalization
        return F.linear(h, weight)


def test_a_weight_whose_fans_cannot_be_read_is_named_in_a_note() -> None:
    notes = auditor.audit(Unjudgeable(), torch.randn(4, 16), select=["INI001"]).results[0].capture.notes
    assert "INI001: the init of `mix` is not judged: it is used through `torch.einsum`" in notes
    assert any(n.startswith("INI001: the init of `direction` is not judged: `F.linear` applies a weight computed from it") for n in notes), notes
