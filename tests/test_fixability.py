"""A finding is `fixable` exactly when `--fix` applies its fix: the audit and the fix loop ask the same question
(the rule's `fix_plan`), on every capture."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import auditor
from auditor.options import FixOptions
from auditor.rule import all_rules
from support import FIXTURES, fix_fixtures, fixture_header, model_results, run

CAPTURES = ("fx", "export", "hooks")
# Built smaller here where the size is not what is asked: containers.py's faults repeat per block (each block's
# DRO002, RES001 in the last, NRM002 in the stem) and 3 blocks hold every kind; its 70 are test_fix's no-cap test.
KWARGS = {"containers": {"depth": 3}}
FIXABLE_CODES = {r.code for r in all_rules() if r.fixable}


def _cases() -> list[object]:
    return [pytest.param(path, method, id=f"{path.parent.name}/{path.stem}[{method}]")
            for path in fix_fixtures() for method in fixture_header(path).get("capture", CAPTURES)]


@pytest.mark.parametrize(("path", "method"), _cases())
def test_fixable_findings_are_fixed_and_the_others_explained(path: Path, method: str, tmp_path: Path) -> None:
    header = fixture_header(path)
    common = {"capture": (method,), "inputs": header.get("input", []), "select": header.get("select", ["ALL"]),
              "kwargs": KWARGS.get(path.stem, {})}
    audited = {r.target: r for r in model_results(run(path, **common))}
    fixed = {r.target: r for r in model_results(run(path, fix=FixOptions(out=tmp_path / "out"), **common))}
    for target, before in audited.items():
        after = fixed[target]
        if before.status != "ok":  # not audited with this capture (yet): nothing to compare
            continue
        if after.status != "ok":  # nothing could be written: then nothing may have been called fixable
            assert "--fix failed" in (after.error or "")
            assert not [f for f in before.findings if f.fixable], after.error
            continue
        left = Counter((f.code, f.module) for f in after.findings)
        unfixable = Counter((f.code, f.module) for f in before.findings if not f.fixable)
        for key, count in left.items():
            assert count <= unfixable[key], f"{key} was called fixable but remains after --fix: {after.capture.notes}"
        notes = [n for n in after.capture.notes if "not fixed" in n or "reverted" in n]
        for finding in after.findings:
            if finding.code in FIXABLE_CODES:
                assert any(finding.code in n for n in notes), f"{finding.code} [{finding.module}] stays without a note"
            assert not finding.fixable  # what --fix left, --fix does not fix


def test_graph_rewrites_are_fixable_only_on_fx_captures() -> None:
    path = FIXTURES / "rules" / "dro001_modules.py"
    for method, expected in (("fx", True), ("export", False), ("hooks", False)):
        findings = [f for r in model_results(run(path, capture=(method,))) for f in r.findings if f.code == "DRO001"]
        assert findings and all(f.fixable is expected for f in findings), method
    bias = FIXTURES / "rules" / "nrm002_bias.py"
    for method in ("fx", "hooks"):  # folding a module's bias changes weights only: any capture; a function's: none
        findings = {f.module: f.fixable for r in model_results(run(bias, capture=(method,))) for f in r.findings if f.code == "NRM002"}
        assert findings == {"conv1": True, "fc": True, "": False}, method


class _TwoNorms(nn.Module):
    """One dropout feeding two conv -> BatchNorm branches: moving it after one norm leaves the other."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.conv_a, self.conv_b = nn.Conv2d(4, 4, 1, bias=False), nn.Conv2d(4, 4, 1, bias=False)
        self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        dropped = self.drop(x)
        return self.bn_a(self.conv_a(dropped)) + self.bn_b(self.conv_b(dropped))


class _Concatenated(nn.Module):
    """A dropout concatenated with another value before conv -> BatchNorm: moving it would drop both."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.conv = nn.Conv2d(8, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(torch.cat([self.drop(x), x.relu()], 1)))


@pytest.mark.parametrize("model", [_TwoNorms, _Concatenated])
def test_dro002_is_not_called_fixable_where_the_fix_cannot_apply(model) -> None:
    x = torch.randn(2, 4, 6, 6)
    report = auditor.audit(model(), x, select=["DRO002"])
    assert report.findings and not any(f.fixable for f in report.findings)
    fixed, after = auditor.fix(model(), x, select=["DRO002"])
    assert not after.results[0].fixes
    assert [f.code for f in after.findings] == [f.code for f in report.findings]
    assert any("DRO002" in n and "not fixed" in n for n in after.results[0].capture.notes)


def test_dro002_fix_moves_the_dropout_past_the_weight_layer_after_the_norm_and_its_activation() -> None:
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16),
                        nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(4, 8)
    (finding,) = auditor.audit(net, x, select=["DRO002"]).findings
    assert finding.fixable
    fixed, report = auditor.fix(net, x, select=["DRO002"])
    (applied,) = report.results[0].fixes
    assert applied.action == "Dropout -> Linear -> BatchNorm1d -> ReLU => Linear -> BatchNorm1d -> ReLU -> Dropout"
    assert [type(m).__name__ for m in fixed] == ["Linear", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert report.findings == []


def test_nothing_is_fixable_when_the_fixed_code_could_not_be_written(tmp_path: Path) -> None:
    path = FIXTURES / "fix" / "user_function.py"
    (audited,) = model_results(run(path, capture=("fx",)))
    assert [(f.code, f.fixable) for f in audited.findings] == [("DRO001", False)]
    (fixed,) = model_results(run(path, capture=("fx",), fix=FixOptions(out=tmp_path / "out")))
    assert fixed.status == "error" and "cannot write the fixed model" in (fixed.error or "") and "doubled" in (fixed.error or "")
    assert not fixed.fixes and [(f.code, f.fixable) for f in fixed.findings] == [("DRO001", False)]
    assert not (tmp_path / "out").exists()


def test_a_partial_graph_offers_no_fix(tmp_path: Path) -> None:
    """The forward stops past the mismatched add whatever the add computes: a shortcut there would not give a
    model that runs, so RES001 is not called fixable, and --fix says so."""
    path = FIXTURES / "models" / "partial_graph.py"
    (audited,) = model_results(run(path))
    assert [(f.code, f.fixable) for f in audited.findings] == [("RES001", False)]
    (fixed,) = model_results(run(path, fix=FixOptions(out=tmp_path / "out")))
    assert fixed.status == "error" and "partial graph" in (fixed.error or "") and not (tmp_path / "out").exists()


def test_judging_an_embedding_fixable_draws_no_random_numbers_on_meta() -> None:
    """The check rebuilds each module on meta with its initialization skipped: a random draw on meta imports
    torch._dynamo (4 s in the first audit of any model with an nn.Embedding). A constructor that differs from
    the module is still refused."""
    import subprocess
    import sys

    script = (
        "import sys, torch.nn as nn\n"
        "from auditor.fixing.codegen import CannotFix, _check_rebuilt, constructor\n"
        "assert constructor(nn.Embedding(10, 4, padding_idx=0)) == 'nn.Embedding(num_embeddings=10, embedding_dim=4, padding_idx=0)'\n"
        "try:\n    _check_rebuilt(nn.Embedding(10, 4), 'nn.Embedding(10, 5)')\nexcept CannotFix:\n    pass\n"
        "else:\n    raise SystemExit('an unfaithful constructor passed')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
