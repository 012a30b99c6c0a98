"""A rule that crashes is an error of its target, never a pass; rule packs that cannot join the catalog are one
usage-error line naming them, for every command.

The packs are installed as pip leaves them (a package and a `.dist-info` with its entry point) into a folder of
their own, and `audit` runs in a fresh process with that folder on PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auditor.findings import Severity
from auditor.rule import find_rule
from support import FIXTURES, run

RULE = '''
from auditor.findings import Severity
from auditor.rule import Rule, register


@register
class {cls}(Rule):
    """
    ## What it does
    {doc}
    """

    code = "{code}"
    name = "{name}"
    severity = Severity.WARNING
    summary = "{doc}"
    scope = "source"

    def check(self, ctx):
        {body}
'''

TRAINING = "def train(nn):\n    return nn.CrossEntropyLoss()\n"  # TRN001 from the built-in catalog, no torch needed


def install_pack(site: Path, package: str, rule: str = "", *, broken: bool = False) -> None:
    """A rule pack as `pip install` leaves it: the package, and a dist-info registering it under auditor.rules."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("import no_such_dependency\n" if broken else "")
    if rule:
        (site / package / "rule.py").write_text(rule)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[auditor.rules]\n{package} = {package}\n")


def rule_source(cls: str, code: str, name: str, body: str, doc: str = "A rule of a third-party pack.") -> str:
    return textwrap.dedent(RULE).format(cls=cls, code=code, name=name, body=body, doc=doc)


def audit(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "auditor", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_pack_rule_that_raises_makes_its_target_an_error_naming_the_rule(tmp_path: Path) -> None:
    site, project = tmp_path / "site", tmp_path / "project"
    install_pack(site, "auditor_boom", rule_source("Boom", "BOO001", "boom", 'raise RuntimeError("a bug in the pack")'))
    project.mkdir()
    (project / "train.py").write_text(TRAINING)
    done = audit(site, project, "train.py", "--select", "BOO001,TRN001")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "audit: error: train.py: rule BOO001 (boom, from auditor_boom) failed: RuntimeError: a bug in the pack"]
    assert "All checks passed" not in done.stdout
    assert "train.py:2 info TRN001" in done.stdout  # the other rules' findings are still shown


def test_a_builtin_rule_that_raises_is_an_error_not_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, ctx):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(type(find_rule("DRO001")), "check", broken)
    report = run(FIXTURES / "rules" / "dro001_modules.py")
    models = [r for r in report.results if r.capture is not None]
    assert models and all(r.status == "error" for r in models)
    assert all(r.error == "rule DRO001 (dropout-before-activation, from auditor_rules) failed: ZeroDivisionError: division by zero" for r in models)
    assert report.exit_code(Severity.INFO) == 2


@pytest.mark.parametrize("command", [["rules"], ["explain", "DUP001"], ["train.py"]], ids=["rules", "explain", "audit"])
def test_two_packs_registering_one_code_name_both_packs_in_one_line(tmp_path: Path, command: list[str]) -> None:
    site, project = tmp_path / "site", tmp_path / "project"
    install_pack(site, "auditor_first", rule_source("First", "DUP001", "first-rule", "return []"))
    install_pack(site, "auditor_second", rule_source("Second", "DUP001", "second-rule", "return []"))
    project.mkdir()
    (project / "train.py").write_text(TRAINING)
    done = audit(site, project, *command)
    assert done.returncode == 2 and "internal error" not in done.stderr, done.stderr
    (line,) = done.stderr.strip().splitlines()
    packs = sorted(["auditor_first (auditor_first.rule.First)", "auditor_second (auditor_second.rule.Second)"])
    assert line.startswith("audit: error: rule code DUP001 is registered twice: by ") and all(pack in line for pack in packs), line


def test_a_pack_that_cannot_be_imported_is_named(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_pack(site, "auditor_broken", broken=True)
    done = audit(site, tmp_path, "rules")
    assert done.returncode == 2
    assert done.stderr.strip() == ("audit: error: rule pack auditor_broken (entry point 'auditor_broken' in auditor.rules) cannot be "
                                   "imported: ModuleNotFoundError: No module named 'no_such_dependency'")
