"""What the training-code rules (CLP001, TRN001, TRN002, AMP003) share: reading a script's calls from its AST.

Never imports torch or the file: names are resolved through the file's own imports (`from torch import nn`
makes `nn.utils.clip_grad_norm_` read as `torch.nn.utils.clip_grad_norm_`), and calls are read per scope
(each function body, and the module body) in source order.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Iterable, Iterator


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


def file_nodes(ctx: Any) -> list[ast.AST]:
    """Every node of the checked file (`ast.walk` order), listed once for all the source rules
    (`SourceContext.shared`): each rule walking the tree itself cost more than the rest of its work."""
    if "nodes" not in ctx.shared:
        ctx.shared["nodes"], ctx.shared["parents"] = walk_with_parents(ctx.tree)
    return ctx.shared["nodes"]


def file_parents(ctx: Any) -> dict[int, ast.AST]:
    """id(node) -> its parent, for every node of the checked file."""
    file_nodes(ctx)
    return ctx.shared["parents"]


def walk_with_parents(tree: ast.AST) -> tuple[list[ast.AST], dict[int, ast.AST]]:
    """`list(ast.walk(tree))` and each node's parent, in one pass."""
    nodes, parents = [tree], {}
    index = 0
    while index < len(nodes):
        node = nodes[index]
        index += 1
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
            nodes.append(child)
    return nodes, parents


def file_imports(ctx: Any) -> Imports:
    if "imports" not in ctx.shared:
        ctx.shared["imports"] = Imports(ctx.tree, file_nodes(ctx))
    return ctx.shared["imports"]


def file_calls(ctx: Any) -> list[Call]:
    """Every call of the checked file in source order, names resolved through its imports."""
    if "calls" not in ctx.shared:
        ctx.shared["calls"] = all_calls(ctx.tree, file_imports(ctx), file_nodes(ctx))
    return ctx.shared["calls"]


class Imports:
    """Local name -> full dotted path, from the file's imports."""

    def __init__(self, tree: ast.Module, nodes: Iterable[ast.AST] | None = None) -> None:
        self.aliases: dict[str, str] = {}
        for node in nodes if nodes is not None else ast.walk(tree):
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
    found = [Call(node, dotted(node.func), imports.resolve(dotted(node.func))) for node in own_nodes(statements) if isinstance(node, ast.Call)]
    return sorted(found, key=_position)


def own_nodes(statements: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every node of these statements, not those inside nested functions, lambdas or classes (in no set order)."""
    stack = list(statements)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def all_calls(tree: ast.Module, imports: Imports, nodes: Iterable[ast.AST] | None = None) -> list[Call]:
    walked = nodes if nodes is not None else ast.walk(tree)
    found = [Call(n, dotted(n.func), imports.resolve(dotted(n.func))) for n in walked if isinstance(n, ast.Call)]
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
