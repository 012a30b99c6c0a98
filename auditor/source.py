"""Static checks on a Python file's source: parsed once, never imported or run, no torch needed."""

from __future__ import annotations

import ast
from typing import Any

from auditor.findings import Finding
from auditor.rule import SourceContext, rules_in_scope
from auditor.selection import Selection

FACTORY_NAMES = ("build_model", "get_model", "create_model", "make_model", "model")


def parse(path: str, text: str) -> ast.Module:
    return ast.parse(text, filename=path)


def check_source(path: str, text: str, tree: ast.Module, selection: Selection, settings: dict[str, Any]) -> list[Finding]:
    ctx = SourceContext(path=path, text=text, tree=tree, settings=settings)
    findings: list[Finding] = []
    for rule in rules_in_scope("source"):
        if selection.enabled(rule.code, rule.name):
            findings.extend(rule.check(ctx))
    return findings


def may_define_models(tree: ast.Module) -> bool:
    """Whether importing the file could yield a model: it uses torch, or defines classes or model factories.

    Files that do neither are never imported, so a pre-commit run over a repository stays fast.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            return True
    return any(
        isinstance(node, ast.ClassDef) or (isinstance(node, ast.FunctionDef) and node.name in FACTORY_NAMES)
        for node in tree.body
    )
