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


def _model_file(tmp_path: Path, name: str, block: str) -> Path:
    """A model file whose constructor is a rule page's code block (`self.lstm = ...`) and whose forward runs it."""
    body = textwrap.indent(textwrap.dedent(block).strip(), " " * 8)
    source = (f"import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              f"{body}\n\n    def forward(self, x):\n        return self.lstm(x)[0]\n")
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return path


@pytest.mark.parametrize("meta", [False, True], ids=["weights", "meta"])
def test_ini002_fires_on_its_own_example_and_not_on_its_use_instead(tmp_path: Path, meta: bool) -> None:
    """The rule page's example, a plain nn.LSTM at PyTorch's default init, is reported (it was not, from b781f62 to
    the fix: an exemption for gated layers at the default), and its per-gate orthogonal init is not; with real
    weights (the values) and on meta (the init calls recorded while building)."""
    from support import run

    sections = next(r for r in all_rules() if r.code == "INI002").doc_sections()
    example, fixed = (CODE_BLOCK.search(sections[h]).group("code") for h in ("Example", "Use instead"))
    inputs = ["2,5,128"]
    report = run(_model_file(tmp_path, "example", example), inputs=inputs, select=["INI002"], meta=meta)
    [finding] = [f for r in report.results for f in r.findings]
    assert (finding.module, finding.line) == ("lstm", 7)
    assert "PyTorch's default init" in finding.message and "gates i, f, g, o" in finding.message
    report = run(_model_file(tmp_path, "use_instead", fixed), inputs=inputs, select=["INI002"], meta=meta)
    assert [r.status for r in report.results if r.capture is not None] == ["ok"]
    assert not [f for r in report.results for f in r.findings]
