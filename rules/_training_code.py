"""What the training-code rules (CLP001, TRN001, TRN002, AMP003) share: reading a script's calls from its AST.

Never imports torch or the file: names are resolved through the file's own imports (`from torch import nn`
makes `nn.utils.clip_grad_norm_` read as `torch.nn.utils.clip_grad_norm_`), and calls are read per scope
(each function body, and the module body) in source order.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterator


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class Imports:
    """Local name -> full dotted path, from the file's imports."""

    def __init__(self, tree: ast.Module) -> None:
        self.aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.aliases[alias.asname] = alias.name
                    else:
                        root = alias.name.split(".")[0]
                        self.aliases.setdefault(root, root)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def resolve(self, name: str | None) -> str | None:
        if name is None:
            return None
        head, _, rest = name.partition(".")
        full = self.aliases.get(head, head)
        return f"{full}.{rest}" if rest else full


@dataclass
class Call:
    node: ast.Call
    name: str | None  # as written: "scaler.scale", "nn.utils.clip_grad_norm_"
    resolved: str | None  # through the imports: "torch.nn.utils.clip_grad_norm_"

    @property
    def last(self) -> str:
        return (self.resolved or self.name or "").rpartition(".")[2]

    @property
    def receiver(self) -> str | None:
        """`scaler` for `scaler.scale(...)`; `self.scaler` for `self.scaler.step(...)`."""
        func = self.node.func
        return dotted(func.value) if isinstance(func, ast.Attribute) else None

    def keyword(self, name: str) -> ast.keyword | None:
        return next((k for k in self.node.keywords if k.arg == name), None)

    @property
    def has_star_kwargs(self) -> bool:
        return any(k.arg is None for k in self.node.keywords)


def scopes(tree: ast.Module) -> Iterator[list[ast.AST]]:
    """The statements of the module body and of every function, each without nested functions or classes."""
    yield [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield list(node.body)


def calls_in(statements: list[ast.AST], imports: Imports) -> list[Call]:
    """Every call in these statements (not inside nested functions, lambdas or classes), in source order."""
    found: list[Call] = []
    stack = list(statements)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            found.append(Call(node, name, imports.resolve(name)))
        stack.extend(ast.iter_child_nodes(node))
    return sorted(found, key=_position)


def all_calls(tree: ast.Module, imports: Imports) -> list[Call]:
    found = [Call(n, dotted(n.func), imports.resolve(dotted(n.func))) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    return sorted(found, key=_position)


def literal(node: ast.AST | None) -> object:
    """The value of a literal (numbers, strings, True/False/None, negative numbers), else a sentinel."""
    if node is None:
        return _MISSING
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return _MISSING


_MISSING = object()


def is_missing(value: object) -> bool:
    return value is _MISSING


def _position(call: Call) -> tuple[int, int, int, int]:
    """Source order; of two calls starting at the same place (`scaler.scale(loss).backward()`), the inner one,
    which ends first and runs first."""
    node = call.node
    return (node.lineno, node.col_offset, node.end_lineno or 0, node.end_col_offset or 0)
