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
