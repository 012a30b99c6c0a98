"""Static checks on a Python file's source: parsed once, never imported or run, no torch needed."""

from __future__ import annotations

import ast

from auditor.files import installed
from auditor.findings import Finding
from auditor.options import Options
from auditor.rule import SourceContext, run_rules


def parse(path: str, text: str) -> ast.Module:
    return ast.parse(text, filename=path)


def check_source(path: str, text: str, tree: ast.Module, options: Options, failures: list[str]) -> list[Finding]:
    """The source rules' findings on one file. Installed code (site-packages, dist-packages, the standard library)
    gets none, even when a target names it: a linter reports on the user's code, which they can change (an
    installed modeling file's `CrossEntropyLoss()` is the library's, and a Trainer's `label_smoothing_factor`
    replaces it), as ruff never lints installed packages."""
    if installed(path):
        return []
    ctx = SourceContext(path=path, text=text, tree=tree, settings=options.settings)
    return run_rules("source", ctx, options.selection, failures, options.verbose)
