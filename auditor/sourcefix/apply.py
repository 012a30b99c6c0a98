"""Applying source edits: every operation planned for one file, in one pass over its concrete syntax tree.

Operations find their node by position (`ops.Span`) in the tree parsed from the same text the child planned
on. Edits compose bottom-up, as LibCST visits: a call unwrapped inside an expression that another operation wraps
is unwrapped first, so `self.act(self.drop(x))` becomes `self.drop(self.act(x))` from two operations. What is
not touched keeps its bytes: comments, blank lines, quotes, line breaks inside brackets.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from auditor.sourcefix import ops as O

_ELEMENT_OPS = (O.MoveElement, O.InsertElement, O.RemoveElement)
_STATEMENT_OPS = (O.RemoveStatement, O.InsertStatements, O.MoveStatement)


class EditError(Exception):
    """Operations that do not fit the file (it changed since they were planned, or two of them collide)."""


def apply_ops(source: bytes, operations: Iterable[O.Op | O.EnsureImport]) -> bytes:
    """The file with the operations applied (its encoding and line endings kept)."""
    module = cst.parse_module(source)
    wrapper = MetadataWrapper(module)
    imports = [op for op in operations if isinstance(op, O.EnsureImport)]
    anchored = [op for op in operations if not isinstance(op, O.EnsureImport)]
    nodes = _nodes_by_span(wrapper)
    transformer = _Editor(nodes, anchored)
    edited = wrapper.module.visit(transformer)
    for op in dict.fromkeys(imports):
        edited = _ensure_import(edited, op.statement)
    return edited.bytes


def _nodes_by_span(wrapper: MetadataWrapper) -> dict[O.Span, cst.CSTNode]:
    positions = wrapper.resolve(PositionProvider)
    found: dict[O.Span, cst.CSTNode] = {}
    for node, where in positions.items():
        span = O.Span(where.start.line, where.start.column, where.end.line, where.end.column, type(node).__name__)
        found.setdefault(span, node)
    return found


class _Editor(cst.CSTTransformer):
    def __init__(self, nodes: dict[O.Span, cst.CSTNode], operations: Sequence[O.Op]) -> None:
        super().__init__()
        self.expression: dict[int, list[O.Op]] = defaultdict(list)
        self.statement: dict[int, list[O.Op]] = defaultdict(list)
        self.moved_after: dict[int, list[O.MoveStatement]] = defaultdict(list)
        self.node_of: dict[O.Span, cst.CSTNode] = nodes
        for op in operations:  # equal operations of different edits both apply (two dropouts wrapping one call)
            node = nodes.get(op.at)
            if node is None:
                raise EditError(f"no {op.at.kind} at line {op.at.line}, column {op.at.column}: the file changed since it was audited")
            if isinstance(op, _STATEMENT_OPS):
                self.statement[id(node)].append(op)
                if isinstance(op, O.MoveStatement):
                    anchor = nodes.get(op.anchor)
                    if anchor is None:
                        raise EditError(f"no statement at line {op.anchor.line}: the file changed since it was audited")
                    self.moved_after[id(anchor)].append(op)
            else:
                self.expression[id(node)].append(op)

    def on_leave(self, original: cst.CSTNode, updated: cst.CSTNode) -> Any:
        if isinstance(updated, (cst.Module, cst.IndentedBlock)):
            updated = self._block(original, updated)  # type: ignore[arg-type]
        pending = self.expression.get(id(original))
        if not pending:
            return updated
        elements = [op for op in pending if isinstance(op, _ELEMENT_OPS)]
        if elements:
            updated = _edit_elements(updated, elements)
        for op in pending:
            if isinstance(op, O.SetArgument):
                updated = _set_argument(updated, op)
        replacing = [op for op in pending if isinstance(op, (O.Replace, O.Unwrap))]
        if len(replacing) > 1:
            raise EditError(f"two edits replace the same {type(original).__name__} at line {pending[0].at.line}")
        if replacing:
            updated = _replaced(updated, replacing[0])
        for op in pending:
            if isinstance(op, O.Wrap):
                updated = _wrapped(updated, op.template)
        return updated

    # --- statements ---------------------------------------------------------------------------------------------
    def _block(self, original: cst.Module | cst.IndentedBlock, updated: cst.Module | cst.IndentedBlock) -> cst.CSTNode:
        if not any(id(s) in self.statement or id(s) in self.moved_after for s in original.body):
            return updated
        by_original = {id(o): u for o, u in zip(original.body, updated.body)}
        body: list[cst.BaseStatement] = []
        for old, new in zip(original.body, updated.body):
            ops = self.statement.get(id(old), [])
            before = [s for op in ops if isinstance(op, O.InsertStatements) and not op.after for s in _statements(op.code)]
            after = [s for op in ops if isinstance(op, O.InsertStatements) and op.after for s in _statements(op.code)]
            leaves = any(isinstance(op, (O.RemoveStatement, O.MoveStatement)) for op in ops)
            movers = self.moved_after.get(id(old), [])
            moved_before = [by_original[id(self.node_of[m.at])] for m in movers if not m.after]
            moved_after = [by_original[id(self.node_of[m.at])] for m in movers if m.after]
            if any(id(self.node_of[m.at]) not in by_original for m in movers):
                raise EditError(f"a statement moved next to line {ops[0].at.line if ops else '?'} is in another block")
            lead = list(before) + moved_before
            if lead and not leaves and isinstance(new, (cst.SimpleStatementLine, cst.BaseCompoundStatement)) and new.leading_lines:
                # comments above a statement stay above what now comes first
                lead[0] = lead[0].with_changes(leading_lines=[*new.leading_lines, *lead[0].leading_lines])
                new = new.with_changes(leading_lines=[])
            body.extend(lead)
            if not leaves:
                body.append(new)
            body.extend(moved_after)
            body.extend(after)
        if not body:
            body = [cst.SimpleStatementLine([cst.Pass()])]
        return updated.with_changes(body=body)


def _statements(code: str) -> list[cst.BaseStatement]:
    return list(cst.parse_module(code).body)


# --- elements of calls and literals ------------------------------------------------------------------------------
def _edit_elements(node: cst.CSTNode, operations: list[O.Op]) -> cst.CSTNode:
    """Reorder, insert and remove the positional arguments of a call or the elements of a list/tuple, keeping the
    layout: the line breaks stay where they were, an entry alone on its line moves with its line (and its
    comment), an entry sharing a line joins the line of the entry it goes next to."""
    items = _items(node)
    lines = _lines(items)
    for op in sorted((o for o in operations if isinstance(o, O.MoveElement)), key=lambda o: o.index):
        source, target = _line_of(lines, op.index, op), _line_of(lines, op.anchor, op)
        if source.entries == [op.index] and target.entries == [op.anchor]:
            lines.remove(source)
            lines.insert(lines.index(target) + (1 if op.after else 0), source)
            continue
        source.entries.remove(op.index)
        if not source.entries:
            lines.remove(source)
            target.comment = _joined(target.comment, source.comment)
        place = target.entries.index(op.anchor)
        target.entries.insert(place + 1 if op.after else place, op.index)
    for op in operations:
        if isinstance(op, O.RemoveElement):
            line = _line_of(lines, op.index, op)
            line.entries.remove(op.index)
            if not line.entries:
                lines.remove(line)
    for op in sorted((o for o in operations if isinstance(o, O.InsertElement)), key=lambda o: -o.index):
        line = _line_of(lines, op.index, op) if op.index < len(items) else lines[-1] if lines else None
        if line is None:
            lines.append(line := _Line([], None, _SPACE))
        where = line.entries.index(op.index) if op.index in line.entries else len(line.entries)
        line.entries.insert(where, _new_item(node, op.code))
    return _rebuilt(node, items, lines)


_SPACE = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))


class _Line:
    """Entries written on one line of a container (original indices, or new nodes), the comment ending the
    line, and the separator between its entries."""

    def __init__(self, entries: list[Any], comment: cst.TrailingWhitespace | None, inner: Any) -> None:
        self.entries, self.comment, self.inner = entries, comment, inner


def _lines(items: list[Any]) -> list[_Line]:
    lines: list[_Line] = []
    current: list[Any] = []
    for index, item in enumerate(items):
        current.append(index)
        if _breaks(item.comma) or index == len(items) - 1:
            inner = items[current[0]].comma if len(current) > 1 else _SPACE
            lines.append(_Line(current, _comment(item.comma), inner))
            current = []
    return lines


def _line_of(lines: list[_Line], index: int, op: O.Op) -> _Line:
    for line in lines:
        if index in line.entries:
            return line
    raise EditError(f"entry {index} of the {op.at.kind} at line {op.at.line} is gone")


def _rebuilt(node: cst.CSTNode, items: list[Any], lines: list[_Line]) -> cst.CSTNode:
    """Separators by position: the k-th line ends as the k-th line did (the last as the last: a trailing comma or
    none; a line added before it as the one before it), with the comment of the line now there. The space
    before a call's closing parenthesis stays last too."""
    endings = [items[line_end].comma for line_end in _line_ends(items)]
    inner = endings[-2] if len(endings) >= 2 else _SPACE  # a line added after the last one ends as the others
    slots = [endings[k] if k < len(endings) - 1 else inner for k in range(len(lines) - 1)] + endings[-1:] if lines else []
    closing = getattr(items[-1], "whitespace_after_arg", None) if items else None
    new_items = []
    for number, (line, ending) in enumerate(zip(lines, slots)):
        for position, entry in enumerate(line.entries):
            item = items[entry] if isinstance(entry, int) else entry
            last = position == len(line.entries) - 1
            item = item.with_changes(comma=_with_comment(ending, line.comment) if last else line.inner)
            if closing is not None:
                final = last and number == len(lines) - 1
                after = closing if final else cst.SimpleWhitespace("") if entry == len(items) - 1 else item.whitespace_after_arg
                if final and line.comment is not None and not _breaks(ending) and isinstance(after, cst.ParenthesizedWhitespace):
                    after = after.with_changes(first_line=line.comment)  # no comma to carry it: before the parenthesis
                item = item.with_changes(whitespace_after_arg=after)
            new_items.append(item)
    if isinstance(node, cst.Call):
        return node.with_changes(args=new_items)
    return node.with_changes(elements=new_items)


def _line_ends(items: list[Any]) -> list[int]:
    return [i for i, item in enumerate(items) if _breaks(item.comma) or i == len(items) - 1]


def _breaks(comma: Any) -> bool:
    return isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace)


def _joined(first: cst.TrailingWhitespace | None, second: cst.TrailingWhitespace | None) -> cst.TrailingWhitespace | None:
    """Two lines' comments on one line: neither is lost."""
    if first is None or second is None:
        return first or second
    assert first.comment is not None and second.comment is not None
    return first.with_changes(comment=cst.Comment(f"{first.comment.value}  {second.comment.value}"))


def _items(node: cst.CSTNode) -> list[Any]:
    if isinstance(node, cst.Call):
        return list(node.args)
    if isinstance(node, (cst.List, cst.Tuple)):
        return list(node.elements)
    raise EditError(f"a {type(node).__name__} has no elements to reorder")


def _new_item(node: cst.CSTNode, code: str) -> Any:
    value = cst.parse_expression(code)
    return cst.Arg(value=value) if isinstance(node, cst.Call) else cst.Element(value=value)


def _comment(comma: Any) -> cst.TrailingWhitespace | None:
    if isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace):
        first = comma.whitespace_after.first_line
        return first if first.comment is not None else None
    return None


def _with_comment(comma: Any, comment: cst.TrailingWhitespace | None) -> Any:
    if not (isinstance(comma, cst.Comma) and isinstance(comma.whitespace_after, cst.ParenthesizedWhitespace)):
        return comma
    first = comment if comment is not None else cst.TrailingWhitespace()
    return comma.with_changes(whitespace_after=comma.whitespace_after.with_changes(first_line=first))


# --- arguments, replacements, wrapping ----------------------------------------------------------------------------
def _set_argument(node: cst.CSTNode, op: O.SetArgument) -> cst.CSTNode:
    if not isinstance(node, cst.Call):
        raise EditError(f"line {op.at.line}: a keyword argument goes on a call, not a {type(node).__name__}")
    value = cst.parse_expression(op.code)
    args = list(node.args)
    for index, arg in enumerate(args):
        if arg.keyword is not None and arg.keyword.value == op.keyword:
            args[index] = arg.with_changes(value=value)
            return node.with_changes(args=args)
    positional = [i for i, a in enumerate(args) if a.keyword is None and not a.star]
    if op.position is not None and op.position < len(positional):
        index = positional[op.position]
        args[index] = args[index].with_changes(value=value)
        return node.with_changes(args=args)
    new = cst.Arg(value=value, keyword=cst.Name(op.keyword), equal=cst.AssignEqual(cst.SimpleWhitespace(""), cst.SimpleWhitespace("")))
    lines = _lines(args)
    if not lines:
        return node.with_changes(args=[new])
    if len(lines[-1].entries) == 1 and len(lines) > 1:
        lines.append(_Line([new], None, _SPACE))  # one argument per line: the new one on its own
        return _rebuilt(node, args, lines)
    lines[-1].entries.append(new)
    return _rebuilt(node, args, lines)


def _replaced(node: cst.CSTNode, op: O.Op) -> cst.CSTNode:
    if isinstance(op, O.Unwrap):
        if not isinstance(node, cst.Call):
            raise EditError(f"line {op.at.line}: only a call can be unwrapped")
        if op.slot < 0:
            if not isinstance(node.func, cst.Attribute):
                raise EditError(f"line {op.at.line}: the call has no receiver")
            inner = node.func.value
        else:
            positional = [a for a in node.args if a.keyword is None and not a.star]
            if op.slot >= len(positional):
                raise EditError(f"line {op.at.line}: the call has no argument {op.slot}")
            inner = positional[op.slot].value
        if op.parenthesize and not inner.lpar:
            inner = inner.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        return inner
    assert isinstance(op, O.Replace)
    if isinstance(node, cst.BaseExpression):
        return cst.parse_expression(op.code)
    statements = _statements(op.code)
    if len(statements) != 1:
        raise EditError(f"line {op.at.line}: a statement is replaced by one statement (use InsertStatements for more)")
    replacement = statements[0]
    if isinstance(node, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
        replacement = replacement.with_changes(leading_lines=node.leading_lines)
        if isinstance(node, cst.SimpleStatementLine) and isinstance(replacement, cst.SimpleStatementLine):
            replacement = replacement.with_changes(trailing_whitespace=node.trailing_whitespace)
    return replacement


def _wrapped(node: cst.CSTNode, template: str) -> cst.CSTNode:
    if not isinstance(node, cst.BaseExpression):
        raise EditError(f"only an expression can be wrapped, not a {type(node).__name__}")
    shell = cst.parse_expression(template)
    inner = node.with_changes(lpar=[], rpar=[]) if node.lpar and _is_argument_hole(shell) else node
    return shell.visit(_Fill(inner))


def _is_argument_hole(shell: cst.BaseExpression) -> bool:
    """Whether the hole is a whole argument of the template's call (then parentheses around it are not needed)."""
    return isinstance(shell, cst.Call) and any(isinstance(a.value, cst.Name) and a.value.value == O.HOLE for a in shell.args)


class _Fill(cst.CSTTransformer):
    def __init__(self, value: cst.BaseExpression) -> None:
        super().__init__()
        self.value = value

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        return self.value if updated.value == O.HOLE else updated


# --- imports ------------------------------------------------------------------------------------------------------
def _ensure_import(module: cst.Module, statement: str) -> cst.Module:
    """Add `statement` after the file's last top-level import (or at the top), unless it is there already."""
    wanted = cst.parse_statement(statement)
    code = module.code_for_node(wanted).strip()
    body = list(module.body)
    last_import = -1
    for index, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine):
            if module.code_for_node(stmt.with_changes(leading_lines=[])).strip() == code:
                return module
            if all(isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body):
                last_import = index
    if last_import < 0:
        index = 1 if body and _is_docstring(body[0]) else 0
        body.insert(index, wanted)
    else:
        body.insert(last_import + 1, wanted)
    return module.with_changes(body=body)


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 and isinstance(statement.body[0], cst.Expr)
            and isinstance(statement.body[0].value, (cst.SimpleString, cst.ConcatenatedString)))
