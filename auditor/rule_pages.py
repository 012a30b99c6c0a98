"""Every rule's documentation as pages: `audit explain CODE`, and `audit rules --format markdown|json` (one page
per rule, as ruff's rule pages come from its rule docs). Built from the registry alone: no torch."""

from __future__ import annotations

from typing import Any

from auditor.rule import Rule, origin


def page(rule: Rule, level: int = 1) -> str:
    """One rule as markdown: `# CODE name`, its facts, then the doc's sections one heading level down."""
    heading = "#" * level
    facts = [f"severity: {rule.severity}", f"scope: {rule.scope}", f"fixable: {_fix_fact(rule)}", f"from: {origin(rule)}"]
    lines = [f"{heading} {rule.code} {rule.name}", "", f"{rule.summary}", "", " · ".join(facts)]
    if rule.fix_title:
        lines += ["", f"Fix (`{'--fix' if rule.fix_availability != '--out' else '--fix --out DIR'}`): {rule.fix_title}"]
    if rule.settings:
        listed = ", ".join(f"`{name}` = {value!r}" for name, value in rule.settings.items())
        lines += ["", f"Settings (`[tool.auditor.settings]`): {listed}"]
    for title, text in rule.doc_sections().items():
        lines += ["", f"{heading}# {title}", "", text]
    return "\n".join(lines) + "\n"


def markdown(rules: list[Rule]) -> str:
    """All rules: an index table linking to one section per rule."""
    lines = ["# Rules", "", "| code | name | severity | scope | `--fix` | what it flags |", "| --- | --- | --- | --- | --- | --- |"]
    for rule in rules:
        anchor = f"{rule.code} {rule.name}".lower().replace(" ", "-")
        lines.append(f"| [{rule.code}](#{anchor}) | {rule.name} | {rule.severity} | {rule.scope} | {rule.fix_availability} | {rule.summary} |")
    return "\n".join(lines) + "\n\n" + "\n".join(page(rule, level=2) for rule in rules)


def record(rule: Rule) -> dict[str, Any]:
    """One rule as JSON: the `audit rules` columns, then its fix title, settings, origin and doc sections."""
    return {
        "code": rule.code,
        "name": rule.name,
        "severity": str(rule.severity),
        "fixable": rule.fixable,
        "scope": rule.scope,
        "summary": rule.summary,
        "fix": rule.fix_title,
        "fix_availability": rule.fix_availability,
        "settings": dict(rule.settings),
        "origin": origin(rule),
        "doc": rule.doc_sections(),
    }


def _fix_fact(rule: Rule) -> str:
    availability = rule.fix_availability
    if not availability:
        return "no"
    if availability == "--out":
        return "with --fix --out DIR (a fixed copy)"
    return f"yes, {availability} fix" if availability != "sometimes" else "yes, safe or unsafe (see Fix safety)"

