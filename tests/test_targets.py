"""Target forms of the contract: file, file:NAME, package.module:NAME, .pt2 program, directory."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from auditor.errors import TargetError
from auditor.targets import Kind, parse_target
from support import FIXTURES, model_results, run


def test_forms(tmp_path):
    model_file = FIXTURES / "models" / "discovery.py"
    assert [t.kind for t in parse_target(str(model_file))] == [Kind.FILE]
    [member] = parse_target(f"{model_file}:Net")
    assert (member.kind, member.name) == (Kind.FILE_MEMBER, "Net")
    [dotted] = parse_target("torchvision.models:resnet18")
    assert (dotted.kind, dotted.module, dotted.name) == (Kind.MODULE_MEMBER, "torchvision.models", "resnet18")
    with pytest.raises(TargetError, match="not a Python name"):
        parse_target(f"{model_file}:not-a-name")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TargetError, match="not a Python file, a notebook, a .pt2 program, a config.json or a directory"):
        parse_target(str(tmp_path / "notes.txt"))


def test_directory_expands_to_python_files_skipping_hidden_and_excluded(tmp_path):
    for relative in ("a.py", "pkg/b.py", ".hidden/c.py", "venv/d.py", "pkg/__pycache__/e.py", "pkg/notes.md"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    found = [t.path.relative_to(tmp_path).as_posix() for t in parse_target(str(tmp_path), exclude=["venv", "__pycache__"])]
    assert found == ["a.py", "pkg/b.py"]


def test_directory_audit_covers_every_file(tmp_path):
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\nmodel = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sigmoid())\n")
    (tmp_path / "util.py").write_text("X = 1\n")
    report = run(tmp_path)
    assert sorted(r.target.rsplit("/", 1)[-1] for r in report.results) == ["net.py", "net.py:model", "util.py"]
    assert [f.code for f in report.findings] == ["DRO001"]


def test_saved_export_program_is_audited_without_source(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 2)).eval()
    path = tmp_path / "program.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 4),)), path)
    [result] = run(path).results
    assert result.status == "ok" and result.capture.method == "export"
    [finding] = result.findings
    assert (finding.code, finding.module) == ("DRO001", "1")
    assert "Tanh `2`" in finding.message


def test_broken_program_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pt2"
    path.write_bytes(b"not a zip")
    [result] = run(path).results
    assert result.status == "error" and result.error.startswith(f"{path}: not a loadable torch.export program")


def test_api_audits_a_live_model_and_leaves_it_as_it_was():
    import auditor

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = auditor.audit(model, torch.randn(2, 3, 8, 8))
    assert [f.code for f in report.findings] == ["NRM001"]
    assert report.findings[0].file is None  # a bare Sequential built outside the tool: no creation site to read
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [f.code for f in auditor.audit(model, torch.randn(2, 3, 8, 8), ignore=["NRM"]).findings] == []
    assert model_results(report)
