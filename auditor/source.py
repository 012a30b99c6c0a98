"""Static checks on a Python file's source: parsed once, never imported or run, no torch needed."""

from __future__ import annotations

import ast

from auditor.findings import Finding
from auditor.options import Options
from auditor.rule import SourceContext, run_rules

FACTORY_NAMES = ("build_model", "get_model", "create_model", "make_model", "model")


def parse(path: str, text: str) -> ast.Module:
    return ast.parse(text, filename=path)


def check_source(path: str, text: str, tree: ast.Module, options: Options, notes: list[str]) -> list[Finding]:
    ctx = SourceContext(path=path, text=text, tree=tree, settings=options.settings)
    return run_rules("source", ctx, options.selection, notes, options.verbose)


def may_define_models(tree: ast.Module) -> bool:
    """Whether importing the file could yield a model: it uses torch, or defines classes or model factories.

    Files that do neither are never imported, so a pre-commit run over a repository stays fast. Scripts that
    would run on import (`runs_on_import`: a training loop at top level) are never imported either.
    """
    if runs_on_import(tree):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            return True
    return any(
        isinstance(node, ast.ClassDef) or (isinstance(node, ast.FunctionDef) and node.name in FACTORY_NAMES)
        for node in tree.body
    )


def runs_on_import(tree: ast.Module) -> bool:
    """Whether importing the file would run it as a script: a loop or `with` block at top level, or a top-level
    call of one of its own functions (`main()`, `fire.Fire(main)`), outside `if __name__ == "__main__":`.
    Importing such a file to look for models would start the training it contains."""
    local = {
        n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    } | {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    functions = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for node in tree.body:
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)):
            return True
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            call = node.value
            if isinstance(call.func, ast.Name) and call.func.id in local:
                return True
            if any(isinstance(a, ast.Name) and a.id in functions for a in call.args):
                return True
    return False
