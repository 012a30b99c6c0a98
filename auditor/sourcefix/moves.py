"""Moving and removing unary ops (dropouts, norms) in the user's source: the entries of the container that
creates them (an `nn.Sequential`, an `OrderedDict`, the list a Sequential is built from), or their calls in
`forward` (two statements swap, or a call's shell moves: `self.act(self.drop(x))` -> `self.drop(self.act(x))`).
A mixin of `EditContext`, whose locating methods (`creation`, `forward_call`) it uses."""

from __future__ import annotations

import re

from dataclasses import dataclass

import libcst as cst

from auditor.fixing.rewrite import CannotFix
from auditor.graph import Node
from auditor.sourcefix import ops as O
from auditor.sourcefix.change import Change
from auditor.sourcefix.source import Element, SourceFile, is_atom, is_whole_statement, method_name

_BINDS_TIGHTER = (cst.Attribute, cst.BinaryOperation, cst.UnaryOperation, cst.Subscript, cst.BooleanOperation, cst.Comparison)


@dataclass
class Located:
    """A call of the forward pass in the source: the file, the call, and which of its inputs the graph node reads
    (positional argument 0, or -1: the receiver of a tensor method)."""

    file: SourceFile
    call: cst.Call
    slot: int

    @property
    def input(self) -> cst.BaseExpression:
        if self.slot < 0:
            assert isinstance(self.call.func, cst.Attribute)
            return self.call.func.value
        return [a for a in self.call.args if a.keyword is None and not a.star][self.slot].value

    def template(self) -> str:
        """The call with its input replaced by the hole a `Wrap` fills."""
        hole = cst.Name(O.HOLE)
        if self.slot < 0:
            assert isinstance(self.call.func, cst.Attribute)
            shell = self.call.with_changes(func=self.call.func.with_changes(value=hole))
        else:
            args = list(self.call.args)
            positional = [i for i, a in enumerate(args) if a.keyword is None and not a.star]
            index = positional[self.slot]
            args[index] = args[index].with_changes(value=hole)
            shell = self.call.with_changes(args=args)
        return self.file.code(shell.with_changes(lpar=[], rpar=[]))


class Moves:
    """`move_after`, `move_before`, `remove` (and their steps), for `EditContext`."""

    # --- moving and removing ----------------------------------------------------------------------------------------
    def move_after(self, node: Node, anchor: Node) -> Change:
        """Make `node` (a unary op: a dropout) run right after `anchor` (the end of the path the graph fix moves it
        past): reorder the container entries that create them, or move the call in the forward pass."""
        return self._move(node, anchor, after=True)

    def move_before(self, node: Node, anchor: Node) -> Change:
        """Make `node` (a norm) run right before `anchor` (an activation)."""
        return self._move(node, anchor, after=False)

    def _move(self, node: Node, anchor: Node, after: bool) -> Change:
        reasons = []
        for attempt in (self._move_entries, self._move_in_forward):
            try:
                return attempt(node, anchor, after)
            except CannotFix as exc:
                reasons.append(str(exc))
        self.cannot("; ".join(dict.fromkeys(reasons)))

    def _move_entries(self, node: Node, anchor: Node, after: bool) -> Change:
        """Both are entries of one nn.Sequential, created as entries of one container in the source."""
        parent = self._sequential_parent(node, anchor)
        file, call = self.creation(node.module)
        anchor_file, anchor_call = self.creation(anchor.module)
        if anchor_file is not file:
            self.cannot("the two modules are created in different files")
        moved, target = file.element(call), file.element(anchor_call)
        if moved is None or target is None:
            self.cannot(f"`{node.module}` and `{anchor.module}` are not both written as entries of a container")
        change = Change(file.path)
        if moved.container is target.container and moved.appended_to is None:
            if (moved.index < target.index) != after:
                self.cannot("the entries are written in another order than the model runs them")
            change.ops.append(O.MoveElement(file.span(moved.container), moved.index, target.index, after))
        else:
            change.ops += self._move_between_entries(file, call, moved, anchor_call, target, after)
        change.renamed = self._reordered(parent, node, anchor, after)
        return change

    def _sequential_parent(self, node: Node, anchor: Node) -> str:
        import torch.nn as nn

        if not (node.is_module and anchor.is_module):
            self.cannot("a function call is not an entry of a container")
        parent, parent_of_anchor = node.module.rpartition(".")[0], anchor.module.rpartition(".")[0]  # type: ignore[union-attr]
        if parent != parent_of_anchor or not isinstance(self.submodule(parent), nn.Sequential):
            self.cannot(f"`{node.module}` and `{anchor.module}` are not entries of one nn.Sequential")
        return parent

    def _move_between_entries(self, file: SourceFile, call: cst.Call, moved: Element, anchor_call: cst.Call, target: Element, after: bool) -> list[O.Op]:
        """A list built in steps (`layers += [conv, relu]; layers.append(bn)`): the entry leaves its statement and
        joins the anchor's, when both build the same list in one block."""
        statement, anchor_statement = file.statement(call), file.statement(anchor_call)
        if statement is None or anchor_statement is None:
            self.cannot("the entries are not created by statements of a block")
        here, there = file.block(statement), file.block(anchor_statement)
        names = {self._list_name(file, moved), self._list_name(file, target)}
        if len(names) != 1 or None in names:
            self.cannot("the entries are not added to one list")
        if here is None or there is None or here[0] is not there[0]:
            return [self._inserted(file, statement, moved, anchor_statement, target, after)]
        first, last = sorted((here[1], there[1]))
        read = file.names_in(call) - {"self"}
        if read & file.assigned_between(here[0], first + 1, last - 1 if here[1] > there[1] else last):
            self.cannot(f"`{file.code(call)}` reads names assigned between the two lines")
        code = file.code(call)
        ops: list[O.Op] = []
        if moved.appended_to is not None:
            if not is_whole_statement(moved.container, statement):
                self.cannot("the append is part of a larger statement")
            ops.append(O.RemoveStatement(file.span(statement)))
        else:
            ops.append(O.RemoveElement(file.span(moved.container), moved.index))
        if target.appended_to is not None:
            ops.append(O.InsertStatements(file.span(anchor_statement), f"{target.appended_to}.append({code})\n", after=after))
        else:
            ops.append(O.InsertElement(file.span(target.container), target.index + (1 if after else 0), code))
        return ops

    def _inserted(self, file: SourceFile, statement: cst.CSTNode, moved: Element, anchor_statement: cst.CSTNode, target: Element,
                  after: bool) -> O.Op:
        """An entry appended in another block (PyTorch-GAN's block helper: `layers = [conv, act]`, then under
        `if bn:` `layers.append(norm)`) goes in at the anchor's index instead: `layers.insert(1, norm)`. Only when
        the anchor is an entry of the list's literal (`layers = [...]`) and the lines between only append to it."""
        name = moved.appended_to
        binding = file.parent(target.container)
        if name is None or target.appended_to is not None or not isinstance(binding, cst.Assign) or binding.value is not target.container:
            self.cannot("the entries are created in different blocks")
        if not is_whole_statement(moved.container, statement) or file.function(moved.container) is not file.function(binding):
            self.cannot("the entries are created in different blocks")
        entries = file.entries(target.container)
        if any(getattr(e, "star", None) or isinstance(e, cst.StarredElement) for e in entries[:target.index + 1]):
            self.cannot(f"`{name}` is built with * entries: the anchor's index is not known")
        first, last = file.line_of(anchor_statement), file.line_of(statement)
        between = "\n".join(file.text_lines(first + 1, last - 1))
        if first >= last or re.search(rf"\b{re.escape(name)}\s*(\.\s*(insert|pop|remove|reverse|sort|clear)\b|\[|=(?!=))|\bdel\s+{re.escape(name)}\b", between):
            self.cannot(f"`{name}` is changed other than by appends between the two lines")
        call = moved.container
        assert isinstance(call, cst.Call)
        return O.Replace(file.span(call), f"{name}.insert({target.index + (1 if after else 0)}, {file.code(call.args[0].value)})")

    @staticmethod
    def _list_name(file: SourceFile, element: Element) -> str | None:
        """The list an entry is added to: `layers` for `layers.append(x)`, `layers += [x]`, `layers.extend([x])`,
        `layers = [x, ...]`."""
        if element.appended_to is not None:
            return element.appended_to
        parent = file.parent(element.container)
        if isinstance(parent, cst.AugAssign):
            return file.code(parent.target)
        if isinstance(parent, cst.Arg):
            call = file.parent(parent)
            if isinstance(call, cst.Call) and method_name(call) == "extend" and isinstance(call.func, cst.Attribute):
                return file.code(call.func.value)
        if isinstance(parent, cst.Assign) and len(parent.targets) == 1:
            return file.code(parent.targets[0].target)
        return None

    def _reordered(self, parent: str, node: Node, anchor: Node, after: bool) -> dict[str, str]:
        """Module renames of reordering the entries in every container the same lines build (a numbered
        nn.Sequential renumbers the entries between the two)."""
        sequential = self.submodule(parent)
        assert sequential is not None
        keys = list(sequential._modules)
        offset = keys.index(anchor.module.rpartition(".")[2]) - keys.index(node.module.rpartition(".")[2])  # type: ignore[union-attr]
        renamed: dict[str, str] = {}
        anchor_site = self.graph.sites.get(anchor.module or "")
        for qualname in self.created_alongside(node.module or ""):
            owner, _, key = qualname.rpartition(".")
            container = self.submodule(owner)
            children = list(container._modules) if container is not None else []
            if key not in children or not 0 <= children.index(key) + offset < len(children):
                self.cannot(f"`{qualname}`, created by the same line, has no entry where the anchor should be")
            partner = children[children.index(key) + offset]
            if self.graph.sites.get(f"{owner}.{partner}") != anchor_site:
                self.cannot(f"`{qualname}`, created by the same line, is not followed by the same entries")
            order = [k for k in children if k != key]
            order.insert(order.index(partner) + (1 if after else 0), key)
            renamed.update(_renumbered(owner, children, order))
        return renamed

    def _move_in_forward(self, node: Node, anchor: Node, after: bool) -> Change:
        """Both are called in one forward method: swap their statements (`x = self.drop(x)` / `x = self.act(x)`),
        or move the call's shell (`self.act(self.drop(x))` -> `self.drop(self.act(x))`)."""
        moved, target = self.forward_call(node), self.forward_call(anchor)
        file = moved.file
        if target.file is not file or file.function(moved.call) is not file.function(target.call):
            self.cannot(f"{node.label()} and {anchor.label()} are called in different functions")
        change = Change(file.path)
        swapped = self._swapped_statements(moved, target, after)
        if swapped is not None:
            change.ops.append(swapped)
            return change
        change.ops += self._without_shell(moved, target)
        if after:
            change.ops.append(self._after_call(target, moved))
        else:
            change.ops.append(O.Wrap(file.span(target.input), moved.template()))
        return change

    def _swapped_statements(self, moved: Located, target: Located, after: bool) -> O.Op | None:
        """`v = drop(v)` moved after `v = act(v)` (or after an in-place `v.relu_()`); `v = norm(v)` moved before
        `v = act(v)`: the user's one-op-per-line style kept."""
        file = moved.file
        variable = _assigned_itself(moved)
        statement, anchor_statement = file.statement(moved.call), file.statement(target.call)
        if variable is None or statement is None or anchor_statement is None or statement is anchor_statement:
            return None
        here, there = file.block(statement), file.block(anchor_statement)
        if here is None or there is None or here[0] is not there[0] or (here[1] < there[1]) != after:
            return None
        leaves_result = _assigned_itself(target) == variable or (after and _in_place_on(target, target.input) == variable)
        if not leaves_result:
            return None
        if self._shell_reads_changed(moved, here[0], *sorted((here[1], there[1]))):
            return None
        return O.MoveStatement(file.span(statement), file.span(anchor_statement), after)

    def _without_shell(self, moved: Located, target: Located | None) -> list[O.Op]:
        """Take the call out where it is: its statement goes when it only reassigns its input (`x = self.drop(x)`)
        and the anchor (`target`, if any) is elsewhere, else the call is replaced by its input."""
        file = moved.file
        statement = file.statement(moved.call)
        anchor_statement = file.statement(target.call) if target is not None else None
        if statement is None or (target is not None and anchor_statement is None):
            self.cannot("the calls are not in statements of a block")
        if anchor_statement is not None and statement is not anchor_statement:
            here, there = file.block(statement), file.block(anchor_statement)
            if here is None or there is None or here[0] is not there[0]:
                self.cannot("the calls are in different blocks")
            if self._shell_reads_changed(moved, here[0], *sorted((here[1], there[1]))):
                self.cannot(f"`{file.code(moved.call)}` reads names that change before its new place")
        if _assigned_itself(moved) is not None and statement is not anchor_statement:
            return [O.RemoveStatement(file.span(statement))]
        parent = file.parent(moved.call)
        parenthesize = not is_atom(moved.input) and isinstance(parent, _BINDS_TIGHTER)
        return [O.Unwrap(file.span(moved.call), moved.slot, parenthesize)]

    def _after_call(self, target: Located, moved: Located) -> O.Op:
        """Apply the moved call to the anchor's result: wrap the anchor's call, or, for an in-place anchor on a
        variable (`x.relu_()`), reassign the variable after its statement."""
        file = target.file
        statement = file.statement(target.call)
        reads = moved.input if target.input is moved.call else target.input  # what the anchor reads once moved
        in_place = _in_place_on(target, reads)
        if in_place is not None and statement is not None and is_whole_statement(target.call, statement):
            return O.InsertStatements(file.span(statement), f"{in_place} = {moved.template().replace(O.HOLE, in_place)}\n", after=True)
        if in_place is not None and statement is not None and file.read_after(statement, in_place):
            self.cannot(f"`{file.code(target.call)}` would change `{in_place}` in place, which is read later")
        return O.Wrap(file.span(target.call), moved.template())

    def _shell_reads_changed(self, moved: Located, block: cst.CSTNode, first: int, last: int) -> bool:
        """Whether the moved call's other arguments read names the statements in between reassign."""
        file = moved.file
        shell = set()
        for arg in moved.call.args:
            if arg.value is not (moved.input if moved.slot >= 0 else None):
                shell |= file.names_in(arg.value)
        if moved.slot >= 0 and isinstance(moved.call.func, (cst.Attribute, cst.Name)):
            shell |= file.names_in(moved.call.func)
        shell -= {"self", "F", "torch", "nn"}
        return bool(shell & file.assigned_between(block, first + 1, last))

    def remove(self, node: Node) -> Change:
        """Take `node` (a unary op) out: drop its entry from the container that creates it, or replace its call in
        the forward pass by its input."""
        reasons = []
        try:
            return self._remove_entry(node)
        except CannotFix as exc:
            reasons.append(str(exc))
        try:
            located = self.forward_call(node)
            return Change(located.file.path, self._without_shell(located, None))
        except CannotFix as exc:
            reasons.append(str(exc))
        self.cannot("; ".join(dict.fromkeys(reasons)))

    def _remove_entry(self, node: Node) -> Change:
        import torch.nn as nn

        parent = (node.module or "").rpartition(".")[0]
        sequential = self.submodule(parent) if node.is_module else None
        if not isinstance(sequential, nn.Sequential):
            self.cannot(f"{node.label()} is not an entry of an nn.Sequential")
        file, call = self.creation(node.module)
        element = file.element(call)
        if element is None or element.appended_to is not None:
            self.cannot(f"`{node.module}` is not written as an entry of a container")
        change = Change(file.path, [O.RemoveElement(file.span(element.container), element.index)])
        for qualname in self.created_alongside(node.module or ""):
            owner, _, key = qualname.rpartition(".")
            container = self.submodule(owner)
            children = list(container._modules) if container is not None else []
            change.renamed.update(_renumbered(owner, children, [k for k in children if k != key]))
        return change


def _renumbered(owner: str, before: list[str], after: list[str]) -> dict[str, str]:
    """Renames of a numbered container's entries when their order changes (`body.2` -> `body.1`)."""
    if not all(k.isdigit() for k in before):
        return {}  # named entries (an OrderedDict) keep their names
    prefix = f"{owner}." if owner else ""
    return {f"{prefix}{key}": f"{prefix}{index}" for index, key in enumerate(after) if str(index) != key}


def _assigned_itself(located: Located) -> str | None:
    """`v` when the call is the whole value of `v = call(v, ...)` (its input is the variable it assigns)."""
    statement = located.file.small_statement(located.call)
    if not isinstance(statement, cst.Assign) or statement.value is not located.call or len(statement.targets) != 1:
        return None
    target = statement.targets[0].target
    source = located.input
    if isinstance(target, cst.Name) and isinstance(source, cst.Name) and target.value == source.value:
        return target.value
    return None


def _in_place_on(located: Located, source: cst.BaseExpression) -> str | None:
    """`v` when the call changes the variable `v` (what it reads) in place: `v.relu_()`, `F.relu(v, inplace=True)`."""
    if not isinstance(source, cst.Name):
        return None
    name = method_name(located.call) or ""
    keyword = any(a.keyword is not None and a.keyword.value == "inplace" and isinstance(a.value, cst.Name) and a.value.value == "True"
                  for a in located.call.args)
    if (located.slot < 0 and name.endswith("_") and not name.startswith("_")) or keyword:
        return source.value
    return None
