"""A third-party rule pack, installed as its users would (`pip install` of a project whose pyproject.toml
registers it under the `auditor.rules` entry point), is discovered by `audit` like the built-in catalog: in
`audit rules`, `audit explain`, findings, `--select`/`--ignore`, and the config's selection and settings.

The pack (tests/fixtures/rulepack) is installed into a folder of its own and `audit` runs in a fresh process
with that folder on PYTHONPATH, so the rule arrives only through entry-point discovery. The commands run in one
process (torch is imported once), each through the command's own Typer apps as `auditor.cli.main` runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from auditor.rule import find_rule
from support import FIXTURES

PACK = FIXTURES / "rulepack"

MODEL = '''
import torch.nn as nn


class Projector(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.head = nn.Linear(32, 2048)

    def forward(self, x):
        return self.head(self.act(self.body(x)))
'''

RAISED_LIMIT = '[tool.auditor]\nselect = ["WID001"]\n\n[tool.auditor.settings]\nmax-linear-width = 4096\n'
BAD_LIMIT = '[tool.auditor]\nselect = ["WID001"]\n\n[tool.auditor.settings]\nmax-linear-width = "wide"\n'

# (name, config written before it or None, command line)
COMMANDS = [
    ("rules", None, ["rules"]),
    ("json", None, ["rules", "--format", "json"]),
    ("markdown", None, ["rules", "--format", "markdown"]),
    ("explain", None, ["explain", "wide-linear"]),
    ("audit", None, ["model.py", "--format", "json"]),
    ("select", None, ["model.py", "--format", "json", "--select", "WID"]),
    ("ignore", None, ["model.py", "--format", "json", "--ignore", "wide-linear"]),
    ("configured", RAISED_LIMIT, ["model.py", "--format", "json"]),
    ("misconfigured", BAD_LIMIT, ["model.py"]),
]

DRIVER = """
import json, sys
from typer.testing import CliRunner
from auditor.cli import audit_app, rules_app
for name, config, args in json.loads(sys.argv[1]):
    if config is not None:
        open("pyproject.toml", "w").write(config)
    app = rules_app if args[0] in ("rules", "explain") else audit_app
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    print(json.dumps({"name": name, "code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Install the pack with pip into its own folder, then run COMMANDS in a project that sees it."""
    site, build, project = (tmp_path_factory.mktemp(name) for name in ("site", "build", "project"))
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(PACK)]
    subprocess.run(install, check=True, capture_output=True, text=True, timeout=300, cwd=build)
    assert list(site.glob("auditor_widths-*.dist-info/entry_points.txt"))
    (project / "model.py").write_text(MODEL.lstrip())
    command = [sys.executable, "-c", DRIVER, json.dumps(COMMANDS)]
    done = subprocess.run(command, cwd=project, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {record["name"]: record for record in map(json.loads, done.stdout.splitlines())}


def findings(run: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    assert run["code"] in (0, 1), run["stderr"]
    return [(f["code"], f["module"], f["file"], f["line"]) for r in json.loads(run["stdout"])["results"] for f in r["findings"]]


def test_the_pack_is_listed_and_explained(runs: dict[str, dict[str, Any]]) -> None:
    assert any(line.split()[:3] == ["WID001", "wide-linear", "warning"] for line in runs["rules"]["stdout"].splitlines())
    records = {r["code"]: r for r in json.loads(runs["json"]["stdout"])}
    assert records["WID001"]["origin"] == "auditor_widths" and records["DRO001"]["origin"] == "auditor_rules"
    assert records["WID001"]["settings"] == {"max-linear-width": 1024}
    assert "\n## WID001 wide-linear\n" in runs["markdown"]["stdout"]
    explained = runs["explain"]["stdout"]
    assert explained.startswith("# WID001 wide-linear\n") and "from: auditor_widths" in explained
    assert "## Why is this bad?" in explained and "`max-linear-width` = 1024" in explained
    assert find_rule("WID001") is None  # this process never installed it


def test_the_pack_finds_selects_ignores_and_reads_the_config(runs: dict[str, dict[str, Any]]) -> None:
    head_line = MODEL.lstrip().splitlines().index("        self.head = nn.Linear(32, 2048)") + 1
    assert ("WID001", "head", "model.py", head_line) in findings(runs["audit"])
    assert {code for code, *_ in findings(runs["select"])} == {"WID001"}
    assert findings(runs["ignore"]) == [] and runs["ignore"]["code"] == 0
    assert findings(runs["configured"]) == []  # only the pack's rule selected, its limit raised in the config
    misconfigured = runs["misconfigured"]
    assert misconfigured["code"] == 2
    assert "setting 'max-linear-width'" in misconfigured["stderr"] and "expected int" in misconfigured["stderr"]
