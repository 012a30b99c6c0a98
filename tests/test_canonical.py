"""Canonical architectures, written by hand as their papers describe them, must audit with no error and no
warning on every capture method: the rules' false-positive guard. (Info findings are allowed: an LSTM keeps
PyTorch's non-orthogonal default init, for instance.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.findings import Severity
from support import FIXTURES, fixture_header, model_results, run

CAPTURES = ("fx", "export", "hooks")
CANONICAL = sorted((FIXTURES / "canonical").glob("*.py"))


@pytest.mark.parametrize("method", CAPTURES)
@pytest.mark.parametrize("path", CANONICAL, ids=lambda p: p.stem)
def test_canonical_architecture_is_clean(path: Path, method: str) -> None:
    header = fixture_header(path)
    report = run(path, capture=(method,), inputs=header.get("input", []))
    models = model_results(report)
    assert models, f"{path.name}: no model found"
    for result in models:
        assert result.status == "ok", result.error
        assert result.capture is not None and result.capture.method == method
    loud = [f for r in report.results for f in r.findings if f.severity >= Severity.WARNING]
    assert not loud, "\n".join(f"{f.code} {f.file}:{f.line} [{f.module}] {f.message}" for f in loud)


def test_canonical_folder_audited_as_users_run_it_is_clean() -> None:
    """`audit canonical/` with no --input: each model's inputs are inferred, and a wrong first guess (a 224x224
    image into a ViT with 32x32 position embeddings, a 28x28 one into a U-Net whose decoder needs sizes divisible
    by 8) must not become a finding."""
    report = run(FIXTURES / "canonical")
    assert len(model_results(report)) >= len(CANONICAL)
    assert all(r.status == "ok" for r in report.results), [(r.target, r.error) for r in report.results if r.status != "ok"]
    loud = [f for r in report.results for f in r.findings if f.severity >= Severity.WARNING]
    assert not loud, "\n".join(f"{f.code} {f.file}:{f.line} [{f.module}] {f.message}" for f in loud)
