"""Every fixture model under fixtures/rules/ is audited with each capture method it declares, and must yield
exactly the findings its `# expect: CODE` comments mark (code and line), nothing more: the fixture is the
expectation, as in flake8-bugbear's and pylint's functional tests. Fixtures without marks must audit clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import FIXTURES, expected_marks, fixture_header, model_results, run

CAPTURES = ("fx", "export", "hooks")
FIXTURE_FILES = sorted((FIXTURES / "rules").glob("*.py"))


def _cases() -> list[tuple[Path, str]]:
    cases = []
    for path in FIXTURE_FILES:
        for method in fixture_header(path).get("capture", CAPTURES):
            cases.append(pytest.param(path, method, id=f"{path.stem}[{method}]"))
    return cases


@pytest.mark.parametrize(("path", "method"), _cases())
def test_fixture_findings_match_marks(path: Path, method: str) -> None:
    header = fixture_header(path)
    report = run(path, capture=(method,), inputs=header.get("input", []), select=header.get("select", ["ALL"]))
    models = model_results(report)
    assert models, f"{path.name}: no model found"
    for result in models:
        assert result.status == "ok", result.error
        assert result.capture is not None and result.capture.method == method
    found = {(f.code, f.line) for r in report.results for f in r.findings}
    expected = expected_marks(path)
    assert found == expected, _explain(report, expected)


def test_every_rule_has_firing_and_clean_fixtures() -> None:
    from auditor.rule import rules_in_scope

    fired = {code for path in FIXTURE_FILES for code, _ in expected_marks(path)}
    missing = [r.code for r in rules_in_scope("graph") if r.code not in fired]
    assert not missing, f"graph rules without a firing fixture: {missing}"
    assert any(not expected_marks(p) for p in FIXTURE_FILES), "no clean fixture"


def _explain(report, expected) -> str:
    lines = [f"expected {sorted(expected)}; got:"]
    for r in report.results:
        for f in r.findings:
            lines.append(f"  {f.code} {f.file}:{f.line} [{f.module}] {f.message}")
    return "\n".join(lines)


@pytest.mark.parametrize("method", CAPTURES)
def test_a_module_called_twice_names_the_call_of_each_finding(method: str) -> None:
    """One Dropout before a ReLU and before a Mish: both findings point where the module is created, and each
    message names the forward line of its own call; people's formats keep them apart."""
    from auditor.report import grouped

    path = FIXTURES / "rules" / "dro001_shared_module.py"
    report = run(path, capture=(method,), inputs=["2,16"], select=["DRO001"])
    lines = path.read_text().splitlines()
    relu_call = next(i for i, line in enumerate(lines, 1) if "self.relu(self.drop" in line)
    mish_call = next(i for i, line in enumerate(lines, 1) if "self.mish(self.drop" in line)
    findings = sorted(report.findings, key=lambda f: f.message)
    assert [f.call.rsplit(":", 1) for f in findings] == [[findings[0].file, str(mish_call)], [findings[1].file, str(relu_call)]]
    assert {f.line for f in findings} == {next(i for i, line in enumerate(lines, 1) if "self.drop = " in line)}
    assert "Mish" in findings[0].message and f":{mish_call}; `drop` is called 2 times" in findings[0].message
    assert "ReLU" in findings[1].message and f":{relu_call}; `drop` is called 2 times" in findings[1].message
    assert len(grouped(findings)) == 2


def test_missing_activation_names_the_module_file_and_line_of_the_first_layer() -> None:
    """ACT001 points at the layer that lacks its activation, not at the one after it."""
    path = FIXTURES / "rules" / "act001_sequential.py"
    findings = [f for r in run(path, select=["ACT001"]).results for f in r.findings]
    assert sorted((f.code, f.module, Path(f.file).name, f.line) for f in findings) == [
        ("ACT001", "classifier.3", path.name, 21), ("ACT001", "features.0", path.name, 11),
    ]
