"""The README's rule table is the registry's, and its two set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from auditor.rule import all_rules

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def rules_table() -> str:
    rows = ["| code | name | severity | scope | `--fix` | what it flags |", "| --- | --- | --- | --- | --- | --- |"]
    for rule in all_rules():
        rows.append(f"| {rule.code} | {rule.name} | {rule.severity} | {rule.scope} | {rule.fix_availability} | {rule.summary} |")
    return "\n".join(rows)


def test_readme_rule_table_matches_the_registry():
    match = re.search(r"<!-- rules-table.*?-->\n(?P<table>.*?)\n<!-- end rules-table -->", README, re.DOTALL)
    assert match, "README has no rules table markers"
    assert match.group("table").strip() == rules_table(), "README rule table is stale; regenerate it from tests/test_readme.py:rules_table"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'pip install torch==2\.13\.0 -e "\.\[dev\]" && (?P<tests>python -m pytest[^\n`]*)', README)
    assert match, "README has no test command"
    assert 'pip install -q torch==2.13.0 -e ".[dev]"' in ci and match.group("tests") in ci.splitlines()
