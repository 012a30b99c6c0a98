"""Planning the source edits of one audited model (in its child process) or one file's source findings: each
finding of a rule with a `source_fix` gets its edit, or the reason it has none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auditor.errors import first_line
from auditor.findings import Finding
from auditor.options import Options
from auditor.rule import find_rule
from auditor.sourcefix.change import NoEdit
from auditor.sourcefix.ops import Planned

if TYPE_CHECKING:
    from auditor.graph import AuditGraph


def plan_model(graph: AuditGraph, findings: list[Finding], options: Options, target: str, **context: Any) -> Planned:
    """The edits of a model's findings, planned on its graph (`context`: what the primitives read besides it)."""
    from auditor.sourcefix.context import EditContext

    fix = options.fix
    assert fix is not None
    ctx = EditContext(graph=graph, shortcut=fix.shortcut, skip_concat=fix.skip_concat, settings=options.settings,
                      findings=list(findings), target=target, **context)
    from auditor.fixing.rewrite import CannotFix

    parameters = tuple(name for name, _ in graph.model.named_parameters()) if graph.model is not None else None
    return _plan(ctx, findings, Planned(parameters=parameters), (NoEdit, CannotFix))


def plan_script(findings: list[Finding], options: Options, path: str) -> Planned:
    """The edits of a file's source-rule findings (training scripts): no model, no torch."""
    from auditor.sourcefix.script import ScriptContext

    return _plan(ScriptContext(path=path, settings=options.settings, findings=list(findings)), findings, Planned(), (NoEdit,))


def _plan(ctx: Any, findings: list[Finding], planned: Planned, refusals: tuple[type[Exception], ...]) -> Planned:
    for finding in findings:
        rule = find_rule(finding.code)
        fix = getattr(rule, "source_fix", None)
        if fix is None:
            continue
        try:
            planned.edits.append(fix(ctx, finding))
        except refusals as exc:
            planned.unfixed.append(f"{_named(finding)}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug in one rule's edit: that finding is not fixed, and it says so
            planned.unfixed.append(f"{_named(finding)}: the edit could not be planned (internal error: {type(exc).__name__}: {first_line(exc)})")
    return planned


def _named(finding: Finding) -> str:
    where = "<root>" if finding.module == "" else finding.module or f"{finding.file}:{finding.line}"
    return f"{finding.code} [{where}]"
