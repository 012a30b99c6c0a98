"""--select/--ignore semantics, per-module ignores and `# audit: ignore[...]` comments."""

from __future__ import annotations

from auditor.findings import Finding, Severity
from auditor.selection import Selection, pattern_matches


def finding(code="DRO001", rule="dropout-before-activation", module="head.drop", file=None, line=None):
    return Finding(code=code, rule=rule, severity=Severity.WARNING, message="m", module=module, file=file, line=line)


def test_selectors_match_all_codes_prefixes_and_names():
    assert pattern_matches("ALL", "INI001", "init-scale")
    assert pattern_matches("INI", "INI001", "init-scale")
    assert pattern_matches("ini0", "INI001", "init-scale")
    assert pattern_matches("init-scale", "INI001", "init-scale")
    assert not pattern_matches("INI002", "INI001", "init-scale")


def test_ignore_wins_over_select():
    selection = Selection(select=["DRO", "NRM001"], ignore=["DRO002"])
    assert selection.enabled("DRO001", "x") and selection.enabled("NRM001", "y")
    assert not selection.enabled("DRO002", "z") and not selection.enabled("RES001", "w")


def test_per_module_ignores_use_globs():
    selection = Selection(per_module_ignores={"encoder.layers.*": ["DRO"]})
    assert not selection.keeps(finding(module="encoder.layers.3.drop"))
    assert selection.keeps(finding(module="decoder.drop"))
    assert selection.keeps(finding(code="INI001", rule="init-scale", module="encoder.layers.3.fc"))


def test_inline_suppression_on_the_line_the_finding_points_to(tmp_path):
    source = tmp_path / "net.py"
    source.write_text(
        "a = 1  # audit: ignore[DRO001]\n"
        "b = 2  # audit: ignore\n"
        "c = 3  # audit: ignore[NRM001, INI]\n"
        "d = 4\n"
    )
    keeps = Selection().keeps
    assert not keeps(finding(file=str(source), line=1))
    assert not keeps(finding(file=str(source), line=2))
    assert keeps(finding(file=str(source), line=3))
    assert not keeps(finding(code="INI003", rule="constant-init", file=str(source), line=3))
    assert keeps(finding(file=str(source), line=4))
