"""One user file as a concrete syntax tree, with the questions the source edits ask of it: the calls on a line, the
statement and block around a node, the container an expression is an element of, the names a function uses.

Parsed once per file and process (`SourceFile.read`); positions are LibCST's, the ones `apply_ops` finds nodes by.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import libcst as cst
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from auditor.files import read_bytes
from auditor.sourcefix.ops import Span

_SCOPES = (cst.FunctionDef, cst.Lambda, cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp, cst.ClassDef)


class Unreadable(Exception):
    """The file cannot be read or parsed."""


@dataclass(frozen=True)
class Element:
    """Where an expression sits among the entries of a container it is built into: the positional arguments of a
    call or the elements of a list/tuple (`container`, `index`), or the argument of `name.append(...)`
    (`appended_to`; then `container` is that call)."""

    container: cst.CSTNode
    index: int
    appended_to: str | None = None


class SourceFile:
    _cache: dict[str, SourceFile] = {}

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.data = data
        self.digest = digest(data)
        try:
            self.wrapper = MetadataWrapper(cst.parse_module(data))
        except cst.ParserSyntaxError as exc:
            raise Unreadable(f"{path} cannot be parsed: {exc.message}") from None
        self.module = self.wrapper.module
        self.positions = self.wrapper.resolve(PositionProvider)
        self.parents = self.wrapper.resolve(ParentNodeProvider)
        self._by_line: dict[int, list[cst.CSTNode]] = {}
        for node, where in self.positions.items():
            self._by_line.setdefault(where.start.line, []).append(node)

    @classmethod
    def read(cls, path: str | Path) -> SourceFile:
        key = str(Path(path).resolve())
        if key not in cls._cache:
            try:
                data = read_bytes(key)
            except OSError as exc:
                raise Unreadable(f"{path} cannot be read: {exc.strerror or exc}") from None
            cls._cache[key] = cls(key, data)
        return cls._cache[key]

    # --- positions --------------------------------------------------------------------------------------------------
    def span(self, node: cst.CSTNode) -> Span:
        where = self.positions[node]
        return Span(where.start.line, where.start.column, where.end.line, where.end.column, type(node).__name__)

    def line_of(self, node: cst.CSTNode) -> int:
        return self.positions[node].start.line

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    def nodes_at(self, line: int) -> list[cst.CSTNode]:
        """Every node starting on `line`."""
        return list(self._by_line.get(line, []))

    def attributes_of_self(self, klass: cst.ClassDef) -> set[str]:
        """Every `self.<name>` a class's code reads or writes."""
        found: set[str] = set()

        class _Attributes(cst.CSTVisitor):
            def visit_Attribute(self, node: cst.Attribute) -> None:
                if isinstance(node.value, cst.Name) and node.value.value == "self":
                    found.add(node.attr.value)

        klass.visit(_Attributes())
        return found

    def calls_at(self, line: int) -> list[cst.Call]:
        """Calls starting on `line`, else calls spanning it (a call written over several lines), innermost first,
        in evaluation order."""
        starting = [n for n in self._by_line.get(line, []) if isinstance(n, cst.Call)]
        if not starting:
            starting = [n for n, w in self.positions.items() if isinstance(n, cst.Call) and w.start.line < line <= w.end.line]
        return sorted(starting, key=self._evaluation_order)

    def calls_named(self, line: int, names: Iterable[str]) -> list[cst.Call]:
        """The calls of one of `names` (`Linear`, `clip_grad_norm_`: the name called, a method's last part)
        starting on `line`, innermost first, in evaluation order."""
        wanted = set(names)
        return [c for c in self.calls_at(line) if method_name(c) in wanted and self.line_of(c) == line]

    def calls_in(self, node: cst.CSTNode) -> list[cst.Call]:
        """The calls inside `node` (a statement written over several lines), in the order they are written."""
        where = self.positions[node]
        inside = [(w.start.line, w.start.column, n) for n, w in self.positions.items() if isinstance(n, cst.Call)
                  and (where.start.line, where.start.column) <= (w.start.line, w.start.column)
                  and (w.end.line, w.end.column) <= (where.end.line, where.end.column)]
        return [n for _, _, n in sorted(inside, key=lambda t: t[:2])]

    def _evaluation_order(self, node: cst.CSTNode) -> tuple[int, int, int, int]:
        """A call completes after the calls in its arguments: by where it ends, then innermost first."""
        where = self.positions[node]
        return (where.end.line, where.end.column, -where.start.line, -where.start.column)

    # --- structure ----------------------------------------------------------------------------------------------------
    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self.parents.get(node)

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        current = self.parents.get(node)
        while current is not None:
            yield current
            current = self.parents.get(current)

    def statement(self, node: cst.CSTNode) -> cst.BaseStatement | None:
        """The statement a node is part of (for a simple statement, its whole line), if it sits in a block."""
        for candidate in [node, *self.ancestors(node)]:
            if isinstance(candidate, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
                block = self.parents.get(candidate)
                return candidate if isinstance(block, (cst.IndentedBlock, cst.Module)) else None
            if isinstance(candidate, _SCOPES[1:]) or isinstance(candidate, cst.SimpleStatementSuite):
                return None  # inside a lambda or comprehension, or a one-line suite: no statement of its own
        return None

    def small_statement(self, node: cst.CSTNode) -> cst.BaseSmallStatement | None:
        """The simple statement (`x = ...`, `return ...`, an expression) a node is part of."""
        for candidate in [node, *self.ancestors(node)]:
            if isinstance(candidate, cst.BaseSmallStatement):
                return candidate
            if isinstance(candidate, _SCOPES):
                return None
        return None

    def block(self, statement: cst.BaseStatement) -> tuple[cst.CSTNode, int] | None:
        parent = self.parents.get(statement)
        if isinstance(parent, (cst.IndentedBlock, cst.Module)):
            return parent, list(parent.body).index(statement)
        return None

    def function(self, node: cst.CSTNode) -> cst.FunctionDef | None:
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, cst.FunctionDef):
                return ancestor
        return None

    def in_scope_of_statement(self, node: cst.CSTNode) -> bool:
        """Whether `node` runs once per run of its statement (not inside a lambda or a comprehension)."""
        for ancestor in self.ancestors(node):
            if isinstance(ancestor, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
                return True
            if isinstance(ancestor, _SCOPES):
                return False
        return True

    def element(self, node: cst.CSTNode) -> Element | None:
        """Where an expression is an entry of a container: an argument of a call, an element of a list or tuple,
        the value of a `("name", module)` pair in a list (OrderedDict entries), or `name.append(node)`."""
        parent = self.parents.get(node)
        if isinstance(parent, cst.Arg) and parent.keyword is None and not parent.star:
            call = self.parents[parent]
            assert isinstance(call, cst.Call)
            if _method_name(call) == "append" and len(call.args) == 1 and isinstance(call.func, cst.Attribute):
                return Element(call, 0, appended_to=self.code(call.func.value))
            return Element(call, list(call.args).index(parent))
        if isinstance(parent, cst.Element):
            literal = self.parents[parent]
            if isinstance(literal, cst.Tuple) and len(literal.elements) == 2 and literal.elements[1] is parent:
                outer = self.parents.get(literal)  # an OrderedDict entry: the pair is the element
                if isinstance(outer, cst.Element) and isinstance(self.parents.get(outer), cst.List):
                    entries = self.parents[outer]
                    return Element(entries, list(entries.elements).index(outer))
            if isinstance(literal, (cst.List, cst.Tuple)):
                return Element(literal, list(literal.elements).index(parent))
        return None

    def text_lines(self, first: int, last: int) -> list[str]:
        """Lines `first` to `last` of the file (1-based, both included; none when last < first)."""
        return self.data.decode("utf-8", "replace").splitlines()[max(first, 1) - 1:max(last, 0)]

    def entries(self, container: cst.CSTNode) -> list[cst.CSTNode]:
        if isinstance(container, cst.Call):
            return list(container.args)
        return list(getattr(container, "elements", []))

    def reachable(self, dotted: str) -> tuple[str, str | None]:
        """How the file's top-level imports reach the module `dotted` (`torch.nn.init`): the expression to write
        (`nn.init`, `init`, `torch.nn.init`) and the import to add when none does (None when one does)."""
        aliases: dict[str, str] = {}
        for statement in self.module.body:
            if not isinstance(statement, cst.SimpleStatementLine):
                continue
            for small in statement.body:
                if isinstance(small, cst.Import):
                    for alias in small.names:
                        name = self.code(alias.name)
                        aliases[self.code(alias.asname.name) if alias.asname else name.split(".")[0]] = name if alias.asname else name.split(".")[0]
                elif isinstance(small, cst.ImportFrom) and small.module is not None and not small.relative and not isinstance(small.names, cst.ImportStar):
                    for alias in small.names:
                        local = self.code(alias.asname.name) if alias.asname else self.code(alias.name)
                        aliases[local] = f"{self.code(small.module)}.{self.code(alias.name)}"
        best: str | None = None
        for local, full in aliases.items():
            if dotted == full or dotted.startswith(full + "."):
                candidate = local + dotted[len(full):]
                if best is None or len(candidate) < len(best):
                    best = candidate
        if best is not None:
            return best, None
        return dotted, "import torch"

    # --- names --------------------------------------------------------------------------------------------------------
    def names_in(self, node: cst.CSTNode) -> set[str]:
        """Every variable name used or bound inside `node` (not attribute names or keywords)."""
        found: set[str] = set()

        class _Names(cst.CSTVisitor):
            def visit_Attribute(self, attribute: cst.Attribute) -> bool:
                attribute.value.visit(self)
                return False

            def visit_Arg(self, arg: cst.Arg) -> bool:
                arg.value.visit(self)
                return False

            def visit_Name(self, name: cst.Name) -> None:
                found.add(name.value)

        node.visit(_Names())
        return found

    def fresh_name(self, scope: cst.CSTNode, wanted: str) -> str:
        """`wanted`, or `wanted_2`, ... : a name `scope` does not use yet."""
        used = self.names_in(scope)
        name, number = wanted, 2
        while name in used:
            name, number = f"{wanted}_{number}", number + 1
        return name

    def assigned_between(self, block: cst.CSTNode, first: int, last: int) -> set[str]:
        """Names bound by the statements of a block from index `first` to `last` (both included)."""
        bound: set[str] = set()

        class _Bound(cst.CSTVisitor):
            def visit_AssignTarget(self, target: cst.AssignTarget) -> None:
                bound.update(_target_names(target.target))

            def visit_AugAssign(self, node: cst.AugAssign) -> None:
                bound.update(_target_names(node.target))

            def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
                bound.update(_target_names(node.target))

            def visit_For(self, node: cst.For) -> None:
                bound.update(_target_names(node.target))

            def visit_NamedExpr(self, node: cst.NamedExpr) -> None:
                bound.update(_target_names(node.target))

        for statement in list(getattr(block, "body", []))[first:last + 1]:
            statement.visit(_Bound())
        return bound

    def read_after(self, statement: cst.BaseStatement, name: str) -> bool:
        """Whether `name` is used by a statement after `statement` in its function (or in the loop around it)."""
        function = self.function(statement)
        scope = function if function is not None else self.module
        end = self.positions[statement].end
        for node, where in self.positions.items():
            if isinstance(node, cst.Name) and node.value == name and (where.start.line, where.start.column) > (end.line, end.column):
                if function is None or self.function(node) is function:
                    return True
        loop = next((a for a in self.ancestors(statement) if isinstance(a, (cst.For, cst.While)) and a is not scope), None)
        return loop is not None and name in self.names_in(loop)


def digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


def method_name(call: cst.Call) -> str | None:
    """`relu_` for `x.relu_()`, `dropout` for `F.dropout(...)`, `Linear` for `nn.Linear(...)`."""
    return _method_name(call)


def _method_name(call: cst.Call) -> str | None:
    func = call.func
    if isinstance(func, cst.Attribute):
        return func.attr.value
    if isinstance(func, cst.Name):
        return func.value
    return None


def first_argument(call: cst.Call, keyword: str) -> cst.Arg | None:
    """What a call passes as its first parameter, named `keyword`: its first positional argument, else the
    argument given by that name (`nn.init.normal_(tensor=w)`)."""
    return next((a for a in call.args if a.keyword is None and not a.star), None) or next(
        (a for a in call.args if a.keyword is not None and a.keyword.value == keyword), None)


def is_whole_statement(call: cst.CSTNode, statement: cst.BaseStatement) -> bool:
    """Whether `call` is the whole of its statement (`x.relu_()` on a line of its own)."""
    return (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
            and isinstance(statement.body[0], cst.Expr) and statement.body[0].value is call)


def accessor(expression: cst.BaseExpression) -> str | None:
    """The last step of how a module is reached: `drop` for `self.drop` or `m.drop`, `a` for `self.drops["a"]`, `0`
    for `self.fcs[0]`."""
    if isinstance(expression, cst.Attribute):
        return expression.attr.value
    if isinstance(expression, cst.Name):
        return expression.value
    if isinstance(expression, cst.Subscript) and len(expression.slice) == 1:
        index = expression.slice[0].slice
        if isinstance(index, cst.Index):
            value = index.value
            if isinstance(value, cst.Integer):
                return value.value
            if isinstance(value, cst.SimpleString):
                return value.evaluated_value if isinstance(value.evaluated_value, str) else None
    return None


def is_atom(expression: cst.BaseExpression) -> bool:
    """Whether an expression needs no parentheses as an operand or a receiver."""
    return bool(expression.lpar) or isinstance(expression, (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Integer, cst.Float,
                                                            cst.SimpleString, cst.List, cst.Tuple, cst.Dict, cst.Set))


def _target_names(target: cst.CSTNode) -> set[str]:
    if isinstance(target, cst.Name):
        return {target.value}
    if isinstance(target, (cst.Tuple, cst.List)):
        return {n for e in target.elements for n in _target_names(e.value)}
    if isinstance(target, cst.StarredElement):
        return _target_names(target.value)
    return set()
