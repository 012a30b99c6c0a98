"""The rule API: what a rule declares, how it reports, and the registry that finds every rule.

A rule is a class in a module of the catalog (`rules/`, installed as `auditor_rules`) or of a third-party pack
registered under the `auditor.rules` entry-point group. Decorating it with `@register` is all it takes to appear in
`audit rules`, `audit explain`, SARIF rule metadata and every audit. This module imports no torch: listing and
explaining rules must stay instant.
"""

from __future__ import annotations

import importlib
import inspect
import importlib.metadata
import pkgutil
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Protocol

from auditor.findings import Finding, Severity

if TYPE_CHECKING:
    from auditor.graph import AuditGraph, Node

SCOPES = ("graph", "source", "probe")
DOC_SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead", "Fix", "References")
CODE_PATTERN = re.compile(r"^[A-Z]{3}[0-9]{3}$")
ENTRY_POINT_GROUP = "auditor.rules"


class Located(Protocol):
    """Anything a finding can point at; graph nodes implement it."""

    name: str
    module: str | None
    file: str | None
    line: int | None


class Rule:
    """Base class of every rule. Subclasses set the class attributes and implement `check`.

    The class docstring is the rule's documentation, in the sections of `DOC_SECTIONS` as `## Heading`
    blocks; `audit explain` prints it and SARIF carries it.
    """

    code: ClassVar[str]
    name: ClassVar[str]
    severity: ClassVar[Severity]
    summary: ClassVar[str]  # one line: what it flags
    scope: ClassVar[str] = "graph"
    fix_title: ClassVar[str | None] = None  # imperative, e.g. "Move the dropout after the activation"; None: no fix
    settings: ClassVar[dict[str, Any]] = {}  # kebab-case name -> default, configurable in [tool.auditor.settings]

    @property
    def fixable(self) -> bool:
        return self.fix_title is not None

    def check(self, ctx: Any) -> Iterable[Finding]:
        raise NotImplementedError

    def finding(
        self,
        message: str,
        *,
        at: Located | None = None,
        severity: Severity | None = None,
        module: str | None = None,
        file: str | None = None,
        line: int | None = None,
        fixable: bool | None = None,
    ) -> Finding:
        """Build a finding of this rule, located at a graph node or at an explicit file and line."""
        if at is not None:
            module = at.module if module is None else module
            file = at.file if file is None else file
            line = at.line if line is None else line
        return Finding(
            code=self.code,
            rule=self.name,
            severity=self.severity if severity is None else severity,
            message=message,
            module=module,
            node=at.name if at is not None else None,
            file=file,
            line=line,
            fixable=self.fixable if fixable is None else fixable,
            hint=self.fix_title,
        )

    @classmethod
    def doc_sections(cls) -> dict[str, str]:
        """The docstring split into its `## Heading` sections."""
        return parse_doc(cls.__doc__ or "")


def parse_doc(doc: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    for raw in inspect.cleandoc(doc).splitlines():
        if raw.startswith("## "):
            if current is not None:
                sections[current] = "\n".join(lines).strip()
            current, lines = raw[3:].strip(), []
        elif current is not None:
            lines.append(raw)
    if current is not None:
        sections[current] = "\n".join(lines).strip()
    return sections


@dataclass
class GraphContext:
    """What a graph rule sees: the captured graph of one model and the effective settings."""

    graph: AuditGraph
    settings: dict[str, Any]

    def setting(self, name: str) -> Any:
        return self.settings[name]

    @property
    def nodes(self) -> list[Node]:
        return self.graph.nodes


@dataclass
class SourceContext:
    """What a source rule sees: one Python file, parsed once, never imported or run."""

    path: str  # as it will be reported (relative to the working directory when possible)
    text: str
    tree: Any  # ast.Module
    settings: dict[str, Any]

    def setting(self, name: str) -> Any:
        return self.settings[name]


_REGISTRY: dict[str, Rule] = {}
_loaded = False


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: add a rule to the catalog. Codes and names must be unique and well-formed."""
    if not CODE_PATTERN.match(cls.code):
        raise ValueError(f"rule code {cls.code!r} is not three capitals and three digits")
    if cls.scope not in SCOPES:
        raise ValueError(f"rule {cls.code}: scope {cls.scope!r} is not one of {SCOPES}")
    for other in _REGISTRY.values():
        if other.code == cls.code and type(other) is not cls:
            raise ValueError(f"rule code {cls.code} registered twice")
        if other.name == cls.name and type(other) is not cls:
            raise ValueError(f"rule name {cls.name} registered twice")
    _REGISTRY[cls.code] = cls()
    return cls


def all_rules() -> list[Rule]:
    """Every registered rule, built-in and third-party, sorted by code."""
    _load_catalogs()
    return sorted(_REGISTRY.values(), key=lambda r: r.code)


def rules_in_scope(scope: str) -> list[Rule]:
    return [r for r in all_rules() if r.scope == scope]


def find_rule(code_or_name: str) -> Rule | None:
    key = code_or_name.strip()
    for rule in all_rules():
        if key.upper() == rule.code or key.lower() == rule.name:
            return rule
    return None


def default_settings() -> dict[str, Any]:
    """Every setting any rule declares, with its default."""
    merged: dict[str, Any] = {}
    for rule in all_rules():
        merged.update(rule.settings)
    return merged


def _load_catalogs() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_catalog("auditor_rules")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.value != "auditor_rules":
            import_catalog(entry.value)


def import_catalog(package_name: str) -> None:
    """Import a rule package and every module in it, so that their `@register` decorators run."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(getattr(package, "__path__", []), prefix=package_name + "."):
        importlib.import_module(info.name)
