"""Meta-tests of the rule catalog: codes and names well-formed and unique, every doc complete and its code
examples valid Python, every graph rule exercised by a firing fixture and a clean one, settings declared
with their defaults, and no rule importing torch at module level (`audit rules` stays instant)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auditor.findings import Severity
from auditor.rule import CODE_PATTERN, DOC_SECTIONS, all_rules, rules_in_scope
from support import FIXTURES, expected_marks

RULES_DIR = Path(__file__).parent.parent / "rules"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
CODE_BLOCK = re.compile(r"```python\n(?P<code>.*?)```", re.DOTALL)
RULE_FIXTURES = sorted((FIXTURES / "rules").glob("*.py"))

# The structural catalog this suite owns: contract code -> (name, severity).
CATALOG = {
    "DRO001": ("dropout-before-activation", Severity.WARNING),
    "DRO002": ("dropout-before-batchnorm", Severity.WARNING),
    "DRO003": ("dropout-on-output", Severity.WARNING),
    "NRM001": ("batchnorm-after-activation", Severity.WARNING),
    "NRM002": ("bias-before-batchnorm", Severity.INFO),
    "NRM003": ("batchnorm-on-sequence", Severity.WARNING),
    "NRM004": ("layernorm-wrong-axis", Severity.WARNING),
    "RES001": ("residual-shape-mismatch", Severity.ERROR),
    "RES002": ("residual-broadcast", Severity.ERROR),
    "RES003": ("deep-plain-stack", Severity.WARNING),
    "RES004": ("skip-concat-mismatch", Severity.ERROR),
    "INI001": ("init-scale", Severity.WARNING),
    "INI002": ("recurrent-init-not-orthogonal", Severity.INFO),
    "INI003": ("constant-init", Severity.ERROR),
}


def test_codes_and_names_are_well_formed_and_unique() -> None:
    rules = all_rules()
    codes = [r.code for r in rules]
    names = [r.name for r in rules]
    assert len(set(codes)) == len(codes)
    assert len(set(names)) == len(names)
    for rule in rules:
        assert CODE_PATTERN.match(rule.code), rule.code
        assert NAME_PATTERN.match(rule.name), rule.name
        assert rule.summary and "\n" not in rule.summary, rule.code


def test_structural_catalog_matches_the_contract() -> None:
    by_code = {r.code: r for r in all_rules()}
    for code, (name, severity) in CATALOG.items():
        assert code in by_code, f"{code} is not registered"
        assert by_code[code].name == name
        assert by_code[code].severity == severity
        assert by_code[code].scope == "graph"


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.code)
def test_doc_has_every_section(rule) -> None:
    sections = rule.doc_sections()
    missing = [s for s in DOC_SECTIONS if not sections.get(s)]
    assert not missing, f"{rule.code}: doc lacks {missing}"


@pytest.mark.parametrize("rule", [r for r in all_rules() if getattr(r, "source_fix", None)], ids=lambda r: r.code)
def test_a_source_fix_says_how_safe_it_is(rule) -> None:
    """As ruff's rule pages: a rule whose fix edits the user's file says whether `--fix` applies it (safe) or only
    `--unsafe-fixes` does, and why."""
    assert rule.fix_safety in ("safe", "unsafe", "sometimes")
    safety = rule.doc_sections().get("Fix safety", "")
    assert safety.split()[0].rstrip(":") in ("Safe", "Unsafe") if rule.fix_safety != "sometimes" else ("Safe" in safety and "nsafe" in safety)


@pytest.mark.parametrize("rule", [r for r in all_rules() if r.code in CATALOG], ids=lambda r: r.code)
def test_doc_examples_are_python(rule) -> None:
    sections = rule.doc_sections()
    for heading in ("Example", "Use instead"):
        blocks = CODE_BLOCK.findall(sections[heading])
        assert blocks, f"{rule.code}: no python block under {heading}"
        for block in blocks:
            ast.parse(textwrap.dedent(block))


@pytest.mark.parametrize("rule", [r for r in all_rules() if r.code in CATALOG], ids=lambda r: r.code)
def test_doc_names_its_settings(rule) -> None:
    doc = rule.__doc__ or ""
    for setting in rule.settings:
        assert f"`{setting}`" in doc, f"{rule.code}: setting {setting} is not documented"


def test_every_graph_rule_has_a_firing_and_a_clean_fixture() -> None:
    fired = {code for path in RULE_FIXTURES for code, _ in expected_marks(path)}
    for rule in rules_in_scope("graph"):
        assert rule.code in fired, f"{rule.code}: no fixture fires it"
        prefixes = (rule.code.lower() + "_clean", rule.code[:3].lower() + "_clean")
        clean = [p for p in RULE_FIXTURES if p.stem.startswith(prefixes)]
        assert clean, f"{rule.code}: no clean fixture ({prefixes[0]}*.py or {prefixes[1]}*.py)"
        for path in clean:
            assert not any(code == rule.code for code, _ in expected_marks(path)), path.name


def test_rule_modules_import_no_torch_at_module_level() -> None:
    for path in RULES_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path.name} imports torch"


def test_listing_rules_does_not_import_torch() -> None:
    code = "import sys; from auditor.rule import all_rules; all_rules(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
