"""Reading a training script's structure from its AST, for the source rules that follow values: where a name was
last assigned, which class an object is built from, what encloses a call (a `with torch.no_grad()`, an
evaluation function), which class a module is defined in, in this file or in a local module it imports.

Never imports torch or the file. Values are followed within one function (the last assignment before the use,
in source order), into `self.attr` assignments of the enclosing class, through the call sites of a function's
parameter, and through `from local_module import Name` into the user's own files (`SourceContext.local_module`).
What cannot be followed is unknown (None): the rules built on this stay silent rather than guess.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Iterator

from auditor.rule import SourceContext
from auditor_rules._training_code import Imports, dotted, file_imports, file_nodes, file_parents, own_nodes, walk_with_parents

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
EVALUATION_NAME = re.compile(r"(^|_)(eval|evaluate|evaluation|valid|validate|validation|val|test|testing|infer|inference|predict|prediction)(_|$)", re.IGNORECASE)
NO_GRAD = frozenset({"no_grad", "inference_mode"})
DEPTH = 6  # how many assignments, calls or files a value is followed through


class Script:
    """One parsed file: its imports, its top-level classes and functions, and each node's parent."""

    def __init__(self, path: str, tree: ast.Module, ctx: SourceContext, checked: bool = False) -> None:
        self.path = path
        self.tree = tree
        self.ctx = ctx
        if checked:
            self.nodes, self.parents, self.imports = file_nodes(ctx), file_parents(ctx), file_imports(ctx)
        else:
            self.nodes, self.parents = walk_with_parents(tree)
            self.imports = Imports(tree, self.nodes)
        self.calls: list[ast.Call] = []  # every call, in source order
        self.calls_named: dict[str, list[ast.Call]] = {}  # by the last part of the callee's name
        for node in self.nodes:
            if isinstance(node, ast.Call):
                self.calls.append(node)
                callee = dotted(node.func)
                if callee is not None:
                    self.calls_named.setdefault(callee.rpartition(".")[2], []).append(node)
        self.calls.sort(key=lambda n: (n.lineno, n.col_offset))
        self.classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        self.functions = {n.name: n for n in tree.body if isinstance(n, FUNCTIONS)}
        self._assignments: dict[int, dict[str, list[tuple[tuple[int, int], tuple[int, int], ast.AST | None]]]] = {}
        self._modules: dict[tuple[str, int], Script | None] = {}
        self._attributes: dict[int, dict[str, ast.expr]] = {}
        self.memo: dict[tuple[str, int, int, int], object] = {}  # for the value analyses built on this (by node ids)

    @staticmethod
    def of(ctx: SourceContext) -> Script:
        """The checked file's Script, built once for every rule that asks."""
        if "script" not in ctx.shared:
            ctx.shared["script"] = Script(ctx.path, ctx.tree, ctx, checked=True)
        return ctx.shared["script"]

    # --- where a node sits --------------------------------------------------------------------------------
    def parent(self, node: ast.AST) -> ast.AST | None:
        return self.parents.get(id(node))

    def ancestors(self, node: ast.AST) -> Iterator[ast.AST]:
        current = self.parent(node)
        while current is not None:
            yield current
            current = self.parent(current)

    def function_of(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        return next((a for a in self.ancestors(node) if isinstance(a, FUNCTIONS)), None)

    def class_of(self, node: ast.AST) -> ast.ClassDef | None:
        return next((a for a in self.ancestors(node) if isinstance(a, ast.ClassDef)), None)

    def scope_of(self, node: ast.AST) -> ast.AST:
        """The function whose body holds the node, else the module."""
        return self.function_of(node) or self.tree

    def without_grad(self, node: ast.AST) -> bool:
        """Inside `with torch.no_grad()` / `torch.inference_mode()` / `torch.set_grad_enabled(False)`, or in a
        function decorated with one of them."""
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, (ast.With, ast.AsyncWith)):
                if any(self.disables_grad(item.context_expr) for item in ancestor.items):
                    return True
            if isinstance(ancestor, FUNCTIONS) and any(self.disables_grad(d) for d in ancestor.decorator_list):
                return True
        return False

    def disables_grad(self, expr: ast.expr) -> bool:
        call = expr if isinstance(expr, ast.Call) else None
        name = self.imports.resolve(dotted(call.func if call else expr)) or ""
        last = name.rpartition(".")[2]
        if last in NO_GRAD:
            return True
        if last == "set_grad_enabled" and call is not None and call.args:
            return isinstance(call.args[0], ast.Constant) and call.args[0].value is False
        return False

    def in_evaluation(self, node: ast.AST) -> bool:
        """Code that evaluates rather than trains: without gradients, or in a function named like evaluation
        (`evaluate`, `validate`, `val_epoch`, `test_step`, `predict`), or in one only such functions call."""
        if self.without_grad(node):
            return True
        function = self.function_of(node)
        return function is not None and bool(EVALUATION_NAME.search(function.name))

    # --- what a name holds ---------------------------------------------------------------------------------
    def assigned_before(self, name: str, use: ast.AST) -> ast.AST | None:
        """The value last assigned to `name` (a plain name or `self.x`) in the scope of `use`, before it in
        source order; for a name the scope never assigns, the module's assignment."""
        scope = self.scope_of(use)
        found = self._last_assignment(scope, name, use)
        if found is None and scope is not self.tree and "." not in name and not _is_parameter(scope, name):
            found = self._last_assignment(self.tree, name, None)
        return found[0] if found is not None else None

    def _last_assignment(self, scope: ast.AST, name: str, before: ast.AST | None) -> tuple[ast.AST | None] | None:
        """(value,) of the last `name = value` in `scope` that ends before `before` starts (so `out =
        out.view(-1)` reads the `out` assigned before it); None when there is none."""
        if id(scope) not in self._assignments:
            self._assignments[id(scope)] = _assignments(scope)
        limit = (before.lineno, before.col_offset) if before is not None and hasattr(before, "lineno") else None
        best = None
        for start, end, value in self._assignments[id(scope)].get(name, ()):
            if (limit is None or end <= limit) and (best is None or start >= best[0]):
                best = (start, value)
        return (best[1],) if best is not None else None

    def attribute_value(self, cls: ast.ClassDef, attr: str) -> ast.AST | None:
        """What `self.attr` is set to in the class's methods (`__init__` first); None when never."""
        if id(cls) not in self._attributes:
            values: dict[str, ast.expr] = {}
            methods = sorted((m for m in cls.body if isinstance(m, FUNCTIONS)), key=lambda m: m.name != "__init__")
            for method in methods:
                for node in ast.walk(method):
                    for target, value in _targets(node):
                        name = dotted(target) or ""
                        if name.startswith("self.") and isinstance(value, ast.expr):
                            values.setdefault(name[5:], value)
            self._attributes[id(cls)] = values
        return self._attributes[id(cls)].get(attr)

    def parameter_arguments(self, function: ast.FunctionDef | ast.AsyncFunctionDef, name: str) -> list[tuple[ast.expr, ast.Call]]:
        """What the file's calls of `function` pass for its parameter `name` (positionally or by keyword); the
        calls of a class for its `__init__`."""
        params = [a.arg for a in (*function.args.posonlyargs, *function.args.args)]
        if name not in params and name not in [a.arg for a in function.args.kwonlyargs]:
            return []
        index = params.index(name) if name in params else None
        cls = self.class_of(function)
        bound = cls is not None and params[:1] in (["self"], ["cls"])
        wanted = cls.name if function.name == "__init__" and cls is not None else function.name
        found = []
        for node in self.calls_named.get(wanted, ()):
            keyword = next((k.value for k in node.keywords if k.arg == name), None)
            if keyword is not None:
                found.append((keyword, node))
                continue
            if index is None:
                continue
            position = index - 1 if bound and (isinstance(node.func, ast.Attribute) or function.name == "__init__") else index
            if 0 <= position < len(node.args) and not any(isinstance(a, ast.Starred) for a in node.args[: position + 1]):
                found.append((node.args[position], node))
        return found

    def is_parameter(self, name: str, use: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        """The function whose parameter `name` is, where `use` reads it unassigned."""
        function = self.function_of(use)
        if function is not None and _is_parameter(function, name) and self._last_assignment(function, name, use) is None:
            return function
        return None

    # --- classes defined here or in the user's own modules ---------------------------------------------------
    def find_class(self, name: str) -> tuple[Script, ast.ClassDef] | None:
        """The class a name in this file refers to: defined here, or imported from a local module."""
        return self._find(name, "classes")  # type: ignore[return-value]

    def find_function(self, name: str) -> tuple[Script, ast.FunctionDef | ast.AsyncFunctionDef] | None:
        """The top-level function a name in this file refers to, here or in a local module."""
        return self._find(name, "functions")  # type: ignore[return-value]

    def _find(self, name: str, table: str) -> tuple[Script, ast.AST] | None:
        if name in getattr(self, table):
            return self, getattr(self, table)[name]
        origin = self.imported_from(name)
        if origin is None:
            return None
        module, level, original = origin
        other = self.module(module, level)
        if other is not None and original in getattr(other, table):
            return other, getattr(other, table)[original]
        return None

    def imported_from(self, name: str) -> tuple[str, int, str] | None:
        """(module, level, original name) of `from module import original as name` or of `module.name`."""
        head, _, rest = name.partition(".")
        for node in self.tree.body:
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == name and not rest:
                        return node.module or "", node.level, alias.name
            elif isinstance(node, ast.Import) and rest and "." not in rest:
                for alias in node.names:
                    if (alias.asname or alias.name) == head:
                        return alias.name, 0, rest
        return None

    def module(self, module: str, level: int) -> Script | None:
        key = (module, level)
        if key not in self._modules:
            found = self.ctx.local_module(module, level)
            self._modules[key] = Script(found[0], found[1], self.ctx) if found is not None else None
        return self._modules[key]


@dataclass
class Located:
    """A node of some file: where a finding can point."""

    script: Script
    node: ast.AST

    @property
    def line(self) -> int:
        return getattr(self.node, "lineno", 0)


def _targets(node: ast.AST) -> Iterator[tuple[ast.expr, ast.AST | None]]:
    """(target, value) of the assignments a statement makes; the value of an augmented assignment is the
    statement itself (`loss /= k`), of a `with ... as name` None."""
    if isinstance(node, ast.Assign):
        for target in node.targets:
            yield target, node.value
    elif isinstance(node, ast.AnnAssign):
        yield node.target, node.value
    elif isinstance(node, ast.AugAssign):
        yield node.target, node
    elif isinstance(node, ast.NamedExpr):
        yield node.target, node.value
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        for item in node.items:
            if item.optional_vars is not None:
                yield item.optional_vars, None


def _assignments(scope: ast.AST) -> dict[str, list[tuple[tuple[int, int], tuple[int, int], ast.AST | None]]]:
    """name -> (start, end, value) of every assignment in `scope`, not in nested functions or classes (value None
    for what is not followed: unpacking, loop variables)."""
    found: dict[str, list[tuple[tuple[int, int], tuple[int, int], ast.AST | None]]] = {}

    def add(name: str | None, node: ast.AST, value: ast.AST | None) -> None:
        if name is not None:
            span = ((node.lineno, node.col_offset), (node.end_lineno or 0, node.end_col_offset or 0))
            found.setdefault(name, []).append((*span, value))

    body = scope.body if isinstance(scope, (ast.Module, *FUNCTIONS)) else []
    for node in own_nodes(body):
        for target, value in _targets(node):
            if isinstance(target, (ast.Tuple, ast.List)):
                for element in target.elts:
                    add(dotted(element), node, None)
            else:
                add(dotted(target), node, value)
        if isinstance(node, (ast.For, ast.AsyncFor)):
            for element in _names(node.target):
                add(dotted(element), node.target, None)
    return found


def _names(target: ast.expr) -> list[ast.expr]:
    return list(target.elts) if isinstance(target, (ast.Tuple, ast.List)) else [target]


def _is_parameter(function: ast.AST, name: str) -> bool:
    if not isinstance(function, FUNCTIONS):
        return False
    args = function.args
    return name in [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
