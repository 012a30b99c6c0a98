"""`audit rules --format markdown|json` renders every rule's page from its doc, and `audit explain` shows the same page."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from auditor.cli import rules_app
from auditor.rule import DOC_SECTIONS, all_rules, find_rule
from auditor.rule_pages import page

runner = CliRunner()


def test_markdown_has_an_index_and_a_page_per_rule_with_every_doc_section() -> None:
    result = runner.invoke(rules_app, ["rules", "--format", "markdown"])
    assert result.exit_code == 0
    text = result.stdout
    pages = re.split(r"^## (?=[A-Z]{3}[0-9]{3} )", text, flags=re.MULTILINE)
    index, bodies = pages[0], {page.split(" ", 1)[0]: page for page in pages[1:]}
    rules = all_rules()
    assert list(bodies) == [r.code for r in rules]
    for rule in rules:
        assert f"| [{rule.code}](#{rule.code.lower()}-{rule.name}) | {rule.name} | {rule.severity} |" in index
        body = bodies[rule.code]
        assert body.startswith(f"{rule.code} {rule.name}\n\n{rule.summary}\n")
        for section in DOC_SECTIONS:
            assert f"\n### {section}\n\n{rule.doc_sections()[section]}\n" in body + "\n", (rule.code, section)
        for setting, default in rule.settings.items():
            assert f"`{setting}` = {default!r}" in body


def test_json_carries_each_rule_page_as_data() -> None:
    result = runner.invoke(rules_app, ["rules", "--format", "json"])
    records = {r["code"]: r for r in json.loads(result.stdout)}
    for rule in all_rules():
        record = records[rule.code]
        assert record["doc"] == rule.doc_sections() and [s for s in record["doc"] if s != "Fix safety"] == list(DOC_SECTIONS)
        if "Fix safety" in record["doc"]:  # a rule whose fix edits the user's file: right after "Fix", as ruff's pages
            assert list(record["doc"]).index("Fix safety") == list(record["doc"]).index("Fix") + 1
        assert record["settings"] == rule.settings and record["fix"] == rule.fix_title
        assert record["fix_availability"] == rule.fix_availability
        assert record["origin"] == "auditor_rules"


def test_explain_prints_the_page_the_markdown_holds_one_level_down() -> None:
    rule = find_rule("INI001")
    assert runner.invoke(rules_app, ["explain", "init-scale"]).stdout == page(rule)
    assert page(rule, level=2) in runner.invoke(rules_app, ["rules", "--format", "markdown"]).stdout
    assert page(rule).startswith("# INI001 init-scale\n") and "\n## Why is this bad?\n" in page(rule)


def test_an_unknown_format_is_a_usage_error() -> None:
    result = runner.invoke(rules_app, ["rules", "--format", "html"])
    assert result.exit_code == 2 and "expected text, markdown or json" in result.stderr
