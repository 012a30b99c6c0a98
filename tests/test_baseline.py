"""Baselines: `--write-baseline` records today's findings, `--baseline` (or `baseline` in [tool.auditor]) hides
them so only new ones fail, by a fingerprint that survives moved lines; stale entries are reported."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditor.cli import audit_app

runner = CliRunner()

OLD = '''
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.drop = nn.Dropout(0.5)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        h = self.act(self.drop(self.fc1(x)))
        return self.fc2(h)
'''

# Every line moved (a docstring and a helper above the class), and a new finding of the same rule in another
# place: a functional dropout before a ReLU in the forward.
NEW = '''
"""The same network, edited."""
import torch.nn as nn
import torch.nn.functional as F


def helper():
    return 1


class Net(nn.Module):
    def __init__(self):
        super().__init__()

        self.fc1 = nn.Linear(16, 32)
        self.drop = nn.Dropout(0.5)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        h = self.act(self.drop(self.fc1(x)))
        h = F.relu(F.dropout(h, 0.2, self.training))
        return self.fc2(h)
'''

OTHER = """

class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(x)
"""

FIXED = OLD.replace("self.act(self.drop(self.fc1(x)))", "self.drop(self.act(self.fc1(x)))")


def audit(*args: str):
    """`audit ARGS` in-process; modules imported from the working directory are dropped first, as each run of the
    command starts a fresh process (the files change between runs here)."""
    here = str(Path.cwd().resolve())
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(here):
            del sys.modules[name]
    return runner.invoke(audit_app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})


def write(path: Path, source: str) -> None:
    path.write_text(textwrap.dedent(source).lstrip())


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "net.py", OLD)
    return tmp_path


def test_only_the_new_finding_fails_after_every_line_moved(project: Path) -> None:
    adopted = audit("net.py", "--write-baseline", "audit-baseline.json", "--fail-on", "warning")
    assert adopted.exit_code == 0, adopted.output
    assert "recorded 1 finding in the baseline audit-baseline.json" in adopted.stderr
    [entry] = json.loads((project / "audit-baseline.json").read_text())["findings"]
    assert (entry["code"], entry["target"], entry["module"], entry["count"]) == ("DRO001", "net.py:Net", "drop", 1)

    write(project / "net.py", NEW)
    result = audit("net.py", "--baseline", "audit-baseline.json", "--fail-on", "warning")
    assert result.exit_code == 1
    new_line = textwrap.dedent(NEW).lstrip().splitlines().index("        h = F.relu(F.dropout(h, 0.2, self.training))") + 1
    assert f"net.py:{new_line} warning DRO001 [<root>] `F.dropout` feeds `F.relu`" in result.stdout
    assert "[drop]" not in result.stdout
    assert "Found 0 errors, 1 warning, 0 info in 2 targets; 1 fixable with `audit --fix`; 1 hidden by the baseline." in result.stdout

    document = json.loads(audit("net.py", "--baseline", "audit-baseline.json", "--format", "json").stdout)
    assert [(f["code"], f["module"]) for r in document["results"] for f in r["findings"]] == [("DRO001", "")]
    assert document["baseline"] == {"file": "audit-baseline.json", "hidden": 1, "stale": [], "gone": []}


def test_without_the_baseline_both_findings_fail(project: Path) -> None:
    audit("net.py", "--write-baseline", "audit-baseline.json")
    write(project / "net.py", NEW)
    result = audit("net.py", "--format", "json")
    modules = sorted(f["module"] for r in json.loads(result.stdout)["results"] for f in r["findings"])
    assert modules == ["", "drop"]


def test_a_fixed_finding_is_reported_as_a_stale_entry(project: Path) -> None:
    audit("net.py", "--write-baseline", "audit-baseline.json")
    write(project / "net.py", FIXED)
    result = audit("net.py", "--baseline", "audit-baseline.json", "--fail-on", "warning")
    assert result.exit_code == 0
    assert "All checks passed! (2 targets audited)" in result.stdout
    assert ("note: 1 baseline entry no longer found (fixed since?): DRO001 in net.py:Net [drop]; "
            "`--write-baseline audit-baseline.json` drops it") in result.stdout
    document = json.loads(audit("net.py", "--baseline", "audit-baseline.json", "--format", "json").stdout)
    [stale] = document["baseline"]["stale"]
    assert (stale["code"], stale["target"], stale["module"], stale["count"]) == ("DRO001", "net.py:Net", "drop", 1)


def test_renaming_the_model_class_lists_the_old_entries_as_stale(project: Path) -> None:
    """The class name is part of a finding's target and so of its fingerprint: after a rename its findings are
    new, and the old name's entries are listed as stale (its model is gone from a file audited whole), not
    silently kept. Auditing another model of the file alone says nothing about them."""
    audit("net.py", "--write-baseline", "audit-baseline.json")
    write(project / "net.py", OLD.replace("class Net(", "class Network(") + OTHER)
    result = audit("net.py", "--baseline", "audit-baseline.json", "--fail-on", "warning")
    assert result.exit_code == 1
    assert "warning DRO001 [drop]" in result.stdout and "net.py:Network" in result.stdout
    assert ("note: 1 baseline entry of models no longer in their file (renamed or removed?): DRO001 in net.py:Net [drop]; "
            "`--write-baseline audit-baseline.json` drops it") in result.stdout
    document = json.loads(audit("net.py", "--baseline", "audit-baseline.json", "--format", "json").stdout)
    [stale] = document["baseline"]["stale"]
    assert (stale["code"], stale["target"], stale["module"]) == ("DRO001", "net.py:Net", "drop")
    assert document["baseline"]["gone"] == ["net.py:Net"]
    alone = json.loads(audit("net.py:Other", "--baseline", "audit-baseline.json", "--format", "json").stdout)
    assert alone["baseline"]["stale"] == []


def test_entries_of_rules_or_targets_not_checked_are_not_stale(project: Path) -> None:
    audit("net.py", "--write-baseline", "audit-baseline.json")
    write(project / "other.py", FIXED)
    for args in (["other.py"], ["net.py", "--ignore", "DRO"], ["net.py", "--select", "INI001"]):
        document = json.loads(audit(*args, "--baseline", "audit-baseline.json", "--format", "json").stdout)
        assert document["baseline"]["stale"] == [], args


def test_the_configured_baseline_is_relative_to_the_config_file_and_runs_from_any_folder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "pyproject.toml").write_text('[tool.auditor]\nbaseline = "ci/baseline.json"\nfail-on = "warning"\n')
    (project / "ci").mkdir()
    assert audit("net.py", "--write-baseline", "ci/baseline.json").exit_code == 0
    write(project / "net.py", NEW)
    assert audit("net.py").exit_code == 1  # the new finding
    write(project / "net.py", OLD)
    assert audit("net.py").exit_code == 0
    monkeypatch.chdir(project / "ci")
    result = audit("../net.py", "--config", "../pyproject.toml")
    assert result.exit_code == 0 and "1 finding hidden by the baseline" in result.stdout


def test_sarif_carries_the_baseline_fingerprint(project: Path) -> None:
    audit("net.py", "--write-baseline", "audit-baseline.json")
    [entry] = json.loads((project / "audit-baseline.json").read_text())["findings"]
    sarif = json.loads(audit("net.py", "--format", "sarif").stdout)
    [result] = sarif["runs"][0]["results"]
    assert result["partialFingerprints"] == {"auditorFingerprint/v1": entry["fingerprint"]}


def test_findings_sharing_a_fingerprint_are_counted(project: Path) -> None:
    losses = "    criteria.append(nn.CrossEntropyLoss())\n" * 2  # two findings, one fingerprint
    (project / "train.py").write_text("import torch.nn as nn\n\ndef losses(criteria):\n" + losses)
    audit("train.py", "--write-baseline", "audit-baseline.json")
    [entry] = json.loads((project / "audit-baseline.json").read_text())["findings"]
    assert (entry["code"], entry["count"]) == ("TRN001", 2)
    (project / "train.py").write_text("import torch.nn as nn\n\n\ndef losses(criteria):\n" + losses + "    criteria.append(nn.CrossEntropyLoss())\n")
    document = json.loads(audit("train.py", "--baseline", "audit-baseline.json", "--format", "json").stdout)
    assert [f["line"] for r in document["results"] for f in r["findings"]] == [7]  # the third, not a moved one
    assert document["baseline"]["hidden"] == 2


@pytest.mark.parametrize(("content", "message"), [
    (None, "baseline missing.json: no such file (create it with --write-baseline missing.json)"),
    ("not json", "baseline missing.json: not a baseline file"),
    ('{"version": 7, "findings": []}', "baseline missing.json: not a version 1 baseline"),
])
def test_a_missing_or_malformed_baseline_is_a_usage_error(project: Path, content: str | None, message: str) -> None:
    if content is not None:
        (project / "missing.json").write_text(content)
    result = audit("net.py", "--baseline", "missing.json")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"audit: error: {message}") and len(result.stderr.splitlines()) == 1
