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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Protocol

from auditor.errors import UsageError, first_line
from auditor.findings import Finding, Severity

if TYPE_CHECKING:
    from auditor.selection import Selection
    from auditor.graph import AuditGraph, Node
    from auditor.graph.inits import Init

SCOPES = ("graph", "source", "probe")
DOC_SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead", "Fix", "References")
FIX_SAFETY = ("safe", "unsafe", "sometimes")  # of a rule's edit of the user's source (`--fix` in place), as ruff's
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
    fix_safe: ClassVar[bool] = False  # the fix provably keeps outputs (verified on the example inputs by --fix)
    # Its edit of the user's source (a `source_fix` method): "safe", applied by `--fix`, when the model or script
    # computes the same after it; "unsafe" when it changes that (applied with `--unsafe-fixes`); "sometimes":
    # per finding, as the rule's "Fix safety" doc section says.
    fix_safety: ClassVar[str | None] = None
    settings: ClassVar[dict[str, Any]] = {}  # kebab-case name -> default, configurable in [tool.auditor.settings]

    @property
    def fixable(self) -> bool:
        return self.fix_title is not None

    @property
    def fix_availability(self) -> str:
        """How `audit rules` shows the fix: its safety when `--fix` edits the source, `--out` when only a fixed
        copy can be written, nothing without a fix."""
        if self.fix_title is None:
            return ""
        if getattr(self, "source_fix", None) is None:
            return "--out"
        return self.fix_safety or "unsafe"

    def check(self, ctx: Any) -> Iterable[Finding]:
        raise NotImplementedError

    def fix_plan(self, ctx: Any, node: Node) -> Any:
        """A fixable rule's preconditions, stated once: read the graph through `ctx` (an
        `auditor.fixing.PlanContext`: the graph and the rewrite primitives' read-only checks) and return what
        `fix` needs, or call `ctx.cannot(reason)`. The audit calls it to mark a finding `fixable`; `fix` calls it
        before it changes anything. The default: the fix applies wherever the rule fires."""
        return None

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
        key: str | None = None,
        unsafe_fix: bool | None = None,
    ) -> Finding:
        """Build a finding of this rule, located at a graph node or at an explicit file and line. `key` tells
        findings of this rule in one module apart for baselines (default: for a functional op, the op and what
        it reads), so it must not depend on line numbers or measured values. `unsafe_fix` (default: the rule's
        `fix_safety` is "unsafe") says this finding's fix needs --unsafe-fixes, for a rule whose safety varies."""
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
            unsafe_fix=self.fix_safety == "unsafe" if unsafe_fix is None else unsafe_fix,
            key=key if key is not None else call_key(at),
        )

    @classmethod
    def doc_sections(cls) -> dict[str, str]:
        """The docstring split into its `## Heading` sections."""
        return parse_doc(cls.__doc__ or "")


def call_key(at: Any) -> str | None:
    """`add(block2.bn2, relu@block1)`: a functional op and its operands (modules by name, ops by op and owner),
    which survives moved lines and renumbered nodes."""
    if getattr(at, "kind", None) != "call":
        return None
    return f"{at.op}({', '.join(_operand(i) for i in at.inputs)})"


def _operand(node: Any) -> str:
    if node.kind == "module":
        return str(node.module)
    if node.kind in ("input", "param"):
        return f"{node.kind}:{node.target}"
    return f"{node.op}@{node.module or ''}"


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
    inits: Any = None  # the init calls recorded while the model was built without weights (an InitRecord), if so
    notes: list[str] = field(default_factory=list)  # the result's capture notes

    def setting(self, name: str) -> Any:
        return self.settings[name]

    def note(self, text: str) -> None:
        """Say something about the audit that is not a finding (a weight the rule cannot judge), once."""
        if text not in self.notes:
            self.notes.append(text)

    def init_of(self, param: Any) -> Init | None:
        """What is known of a weight's initial values (`auditor.graph.inits.Init`): read from its values, or,
        for a model built without weights, from the init calls recorded while it was built; None when
        neither says (values loaded from a file, say)."""
        if self.inits is not None:
            return self.inits.init_of(param)
        from auditor.graph.inits import measured

        return measured(param)

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
    _modules: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)
    shared: dict[str, Any] = field(default_factory=dict, repr=False)  # analyses rules share, computed once per file

    def setting(self, name: str) -> Any:
        return self.settings[name]

    def local_module(self, module: str, level: int = 0) -> tuple[str, Any] | None:
        """The path (as reported) and parsed tree of the user's own module that this file imports as `module`
        (`from models import Net`, `from .nets import Critic` with `level=1`), read, never imported; None for an
        installed package or a file that cannot be read. Rules that follow a model class into the file that
        defines it use this. Parsed once per file checked."""
        key = (module, level)
        if key not in self._modules:
            self._modules[key] = _read_local_module(self.path, module, level)
        return self._modules[key]


def _read_local_module(importer: str, module: str, level: int) -> tuple[str, Any] | None:
    import ast
    from pathlib import Path

    from auditor.locations import display_path
    from auditor.static.project import module_file, read_source

    path = module_file(Path(importer).resolve(), module.split(".") if module else [], level)
    if path is None:
        return None
    try:
        tree = ast.parse(read_source(path), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    return display_path(str(path)), tree


# How `--probe` runs (not thresholds: those are the probe rules' own settings), under [tool.auditor.settings].
PROBE_SETTINGS: dict[str, Any] = {
    "probe-passes": 1,  # float32 forward/backward passes of the gradient probe (a second batch changes ~nothing)
    "probe-steps": 3,  # float16 mixed-precision training steps (GradScaler, unscale_, clipping); bfloat16 runs one
    "probe-seed": 0,  # seeds the synthetic batches, labels and dropout
}


@dataclass
class Location:
    """A place a finding can point at that is not a graph node: a module and the user's line."""

    name: str | None
    module: str | None
    file: str | None
    line: int | None


@dataclass
class ProbeContext:
    """What a probe rule sees: the graph, what `--probe` measured on the model, and the effective settings."""

    graph: AuditGraph | None
    measurements: Any  # auditor.probes.Measurements (not imported here: it would import torch)
    settings: dict[str, Any]

    def setting(self, name: str) -> Any:
        return self.settings[name]

    def output_node(self) -> Located | None:
        """Where a whole-model finding points: the node that produces the model's output."""
        output = self.graph.output if self.graph is not None else None
        producers = self.graph.predecessors(output) if output is not None else []
        return producers[0] if producers else None

    def locate(self, module: str | None, site: tuple[str, int] | None = None) -> Located | None:
        """Where a finding about `module` (and the forward line `site` of one of its calls) points: the graph node
        of that call, else the module's own node, else its nearest atomic ancestor's (a Linear inside an opaque
        nn.TransformerEncoderLayer), else the bare module and line, else where the module is created (one the
        forward never calls, such as a ParameterList). Pass `module=` to `finding` as well, so the
        finding names the exact module even when it points at an ancestor's node."""
        nodes = self.graph.nodes if self.graph is not None else []
        if site is not None:
            same_line = [n for n in nodes if (n.file, n.line) == tuple(site) and n.kind == "call"]
            owned = [n for n in same_line if n.module == module]
            if owned or same_line:
                return (owned or same_line)[0]
        if module is not None:
            name = module
            while True:
                found = next((n for n in nodes if n.kind == "module" and n.module == name), None)
                if found is not None:
                    return found
                if not name:
                    break
                name = name.rpartition(".")[0]
        if site is not None:
            return Location(None, module, site[0], site[1])
        created = self.graph.sites.get(module) if self.graph is not None and module is not None else None
        if created is not None:  # a module the forward never calls (a ParameterList it reads weights from)
            return Location(None, module, created[0], created[1])
        return None


_REGISTRY: dict[str, Rule] = {}
_loaded = False


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: add a rule to the catalog. Codes and names must be unique and well-formed; a rule that
    breaks this is a usage error naming its package (and, for a clash, both packages), as `audit` reports it."""
    if not CODE_PATTERN.match(cls.code):
        raise UsageError(f"rule {_defined(cls)}: code {cls.code!r} is not three capitals and three digits")
    if cls.scope not in SCOPES:
        raise UsageError(f"rule {_defined(cls)}: scope {cls.scope!r} is not one of {', '.join(SCOPES)}")
    if getattr(cls, "source_fix", None) is not None and cls.fix_safety not in FIX_SAFETY:
        raise UsageError(f"rule {_defined(cls)}: a source fix needs fix_safety, one of {', '.join(FIX_SAFETY)}")
    for other in _REGISTRY.values():
        for what in ("code", "name"):
            if getattr(other, what) == getattr(cls, what) and type(other) is not cls:
                raise UsageError(f"rule {what} {getattr(cls, what)} is registered twice: by {_defined(type(other))} and by "
                                 f"{_defined(cls)}; uninstall one of the two packages")
    _REGISTRY[cls.code] = cls()
    return cls


def _defined(cls: type[Rule]) -> str:
    """`auditor_widths (auditor_widths.wid001.WideLinear)`: the package that defines a rule class, and where."""
    return f"{cls.__module__.split('.')[0]} ({cls.__module__}.{cls.__qualname__})"


def all_rules() -> list[Rule]:
    """Every registered rule, built-in and third-party, sorted by code."""
    _load_catalogs()
    return sorted(_REGISTRY.values(), key=lambda r: r.code)


def rules_in_scope(scope: str) -> list[Rule]:
    return [r for r in all_rules() if r.scope == scope]


def run_rules(scope: str, ctx: Any, selection: Selection, failures: list[str], verbose: bool = False) -> list[Finding]:
    """The enabled rules of one scope on one context. A rule that raises (a bug of ours or of a rule pack's) adds
    one line naming it and its package to `failures`, which makes the target an error: a crashed rule is never a
    pass. The other rules still run, so their findings are not lost (with --verbose it raises, for the traceback)."""
    findings: list[Finding] = []
    for rule in rules_in_scope(scope):
        if not selection.enabled(rule.code, rule.name):
            continue
        try:
            findings.extend(rule.check(ctx))
        except Exception as exc:  # noqa: BLE001
            if verbose:
                raise
            failures.append(f"rule {rule.code} ({rule.name}, from {origin(rule)}) failed: {type(exc).__name__}: {first_line(exc)}")
    return findings


def origin(rule: Rule) -> str:
    """The package that registered the rule: `auditor_rules` for the built-in catalog, else the rule pack's."""
    return type(rule).__module__.split(".")[0]


def find_rule(code_or_name: str) -> Rule | None:
    key = code_or_name.strip()
    for rule in all_rules():
        if key.upper() == rule.code or key.lower() == rule.name:
            return rule
    return None


def default_settings() -> dict[str, Any]:
    """Every setting any rule declares, with its default, and the probe run's own (`PROBE_SETTINGS`)."""
    merged: dict[str, Any] = dict(PROBE_SETTINGS)
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
        if entry.value == "auditor_rules":
            continue
        try:
            import_catalog(entry.value)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken third-party pack: named in one line, not a crash of ours
            raise UsageError(f"rule pack {entry.value} (entry point {entry.name!r} in {ENTRY_POINT_GROUP}) cannot be imported: "
                             f"{type(exc).__name__}: {first_line(exc)}") from exc


def import_catalog(package_name: str) -> None:
    """Import a rule package and every module in it, so that their `@register` decorators run."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(getattr(package, "__path__", []), prefix=package_name + "."):
        importlib.import_module(info.name)
