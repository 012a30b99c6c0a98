"""Output formats: one module per `--format`, each a function from a Report to what goes on stdout."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from auditor.findings import AppliedFix, Finding, Report, Severity

FORMATS = ("text", "json", "sarif", "github")


def renderer(name: str) -> Callable[[Report], str]:
    """The machine formats; text goes through a rich console instead (see auditor.report.text)."""
    if name == "json":
        from auditor.report.json import render
    elif name == "sarif":
        from auditor.report.sarif import render
    elif name == "github":
        from auditor.report.github import render
    else:
        raise ValueError(f"no plain renderer for format {name!r}")
    return render


@dataclass
class Group:
    """Findings people read as one: the first in full, the others named after it."""

    first: Finding
    others: list[Finding]
    where: str  # how the others relate to the first: "at this line", "along this chain", "in this model"

    def others_text(self, shown: int = 4) -> str:
        """"3 more at this line: `blocks.1.drop`, `blocks.2.drop`, `blocks.3.drop`"."""
        return others_text([f.module for f in self.others], self.where, shown)


def others_text(modules: list[str | None], where: str, shown: int = 4) -> str:
    """"N more WHERE: `a`, `b`, `c`, `d`, ... (M more)"."""
    names = [f"`{module or '<root>'}`" for module in modules[:shown]]
    more = f", ... ({len(modules) - shown} more)" if len(modules) > shown else ""
    return f"{len(modules)} more {where}: {', '.join(names)}{more}"


def grouped_fixes(fixes: list[AppliedFix]) -> list[tuple[AppliedFix, list[AppliedFix]]]:
    """The fixes people read as one, as `grouped` does for findings: one rule's fix making the same change in
    several modules (the same action but for names and numbers, equally safe; an edit of the user's file: at the
    same line, as a class's edit fixes each of its instances), the first with the others."""
    groups: dict[tuple[object, ...], list[AppliedFix]] = {}
    for fix in fixes:
        groups.setdefault((fix.code, _template(fix.action), fix.safe, fix.file, fix.line), []).append(fix)
    return [(group[0], group[1:]) for group in groups.values()]


def grouped(findings: list[Finding]) -> list[Group]:
    """One entry per cause, for people (JSON and SARIF keep every finding): one rule's infos in one model
    ("NRM002" on 152 convs), one rule's findings along one chain of layers (INI001 on the 20 layers of an MLP,
    `Finding.group`), and one rule's findings at one source line (layers built in a loop share it)."""
    groups: dict[tuple[object, ...], list[Finding]] = {}
    for finding in findings:
        groups.setdefault(_key(finding), []).append(finding)
    return [Group(group[0], group[1:], _where(group)) for group in groups.values()]


def _key(finding: Finding) -> tuple[object, ...]:
    if finding.severity == Severity.INFO:
        return ("rule", finding.code)
    if finding.group is not None:
        return ("chain", finding.code, finding.group, _template(finding.message))
    if finding.file and finding.line:
        return ("line", finding.code, finding.file, finding.line, finding.call)
    return (id(finding),)


def _template(message: str) -> str:
    """A message without its names and numbers: findings along a chain are one cause when only those differ."""
    return _NUMBERS.sub("#", _NAMES.sub("`#`", message))


def _where(group: list[Finding]) -> str:
    first = group[0]
    if all((f.file, f.line) == (first.file, first.line) for f in group):
        return "at this line"
    if first.severity == Severity.INFO:
        return f"{first.code} findings in this {'model' if first.module is not None else 'file'}"
    return "along this chain of layers"


_NAMES = re.compile(r"`[^`]*`")
_NUMBERS = re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?")
