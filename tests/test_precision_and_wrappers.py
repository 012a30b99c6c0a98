"""The findings do not depend on how a training script runs the model: under bf16 or fp16 autocast, with its
weights in bfloat16 or float16, with a forward that enters autocast itself (accelerate's mixed precision), or
inside `torch.compile`, DataParallel or DistributedDataParallel. The audit reads the user's model in float32
semantics and names its modules as the user's code does. (The callbacks under a bf16/fp16 Trainer and
Lightning run: tests/test_integrations.py.)"""

from __future__ import annotations

import contextlib
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import auditor


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.drop = nn.Dropout(0.1)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.act(self.drop(self.fc1(x))))


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _found(report: auditor.Report) -> list[tuple[str, str | None, int | None]]:
    return sorted((f.code, f.module, f.line) for f in report.findings)


X = torch.randn(4, 16)
EXPECTED = [("DRO001", "drop", None)]


def _with_line(found: list[tuple[str, str | None, int | None]]) -> list[tuple[str, str | None, None]]:
    assert all(line is not None for _, _, line in found)
    return [(code, module, None) for code, module, _ in found]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_findings_and_probe_numbers_are_the_same_under_autocast(dtype: torch.dtype) -> None:
    plain = auditor.audit(_net(), X, probe=True)
    with torch.autocast("cpu", dtype=dtype):
        mixed = auditor.audit(_net(), X, probe=True)
        assert torch.is_autocast_enabled("cpu")  # the caller's autocast is back on afterwards
    assert _with_line(_found(mixed)) == EXPECTED and _found(mixed) == _found(plain)
    grads = [[layer["grad_norm"] for layer in r.results[0].probes["layers"]] for r in (plain, mixed)]
    assert grads[0] == pytest.approx(grads[1], rel=1e-6)  # float32 passes, not autocast ones


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_low_precision_model_is_audited_and_probed_as_in_float32(dtype: torch.dtype) -> None:
    model = _net().to(dtype)
    report = auditor.audit(model, X.to(dtype), probe=True)
    assert _with_line(_found(report)) == EXPECTED
    result = report.results[0]
    assert any(f"weights are {str(dtype)[6:]}: probed in float32" in n for n in result.probes["notes"])
    assert all(p.dtype == dtype for p in model.parameters())  # the user's model is left as it was


def test_a_forward_wrapped_in_autocast_is_captured_inline() -> None:
    """accelerate's `prepare_model` under mixed precision: an instance `forward` entering autocast (torch.export
    would record one `wrap_with_autocast` op and hide the dropout)."""
    model = _net()
    original = model.forward
    model.forward = types.MethodType(lambda self, x: torch.autocast("cpu", dtype=torch.bfloat16)(original)(x), model)
    report = auditor.audit(model, X)
    assert _with_line(_found(report)) == EXPECTED
    assert report.results[0].capture.nodes == auditor.audit(_net(), X).results[0].capture.nodes
    assert torch.amp.autocast_mode.autocast.__enter__ is not None  # torch's own class is left working
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


@contextlib.contextmanager
def _process_group(tmp_path: Path):
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("wrapper", ["compile", "DataParallel", "DistributedDataParallel"])
def test_the_model_inside_a_wrapper_is_audited_under_its_own_names(wrapper: str, tmp_path: Path) -> None:
    model = _net()
    with _process_group(tmp_path) if wrapper == "DistributedDataParallel" else contextlib.nullcontext():
        wrapped = {
            "compile": lambda: torch.compile(model),
            "DataParallel": lambda: nn.DataParallel(model),
            "DistributedDataParallel": lambda: nn.parallel.DistributedDataParallel(model),
        }[wrapper]()
        report = auditor.audit(wrapped, X)
    assert _found(report) == _found(auditor.audit(_net(), X))
    name = "OptimizedModule" if wrapper == "compile" else wrapper
    assert f"audited the model inside its {name} wrapper" in report.results[0].capture.notes
