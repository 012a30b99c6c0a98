"""What a rule's `source_fix(ctx, finding)` sees: the audited graph (a `PlanContext`, so `fix_plan` runs on it
unchanged) and the primitives that turn the graph fix's intent into edits of the user's file.

A fixable rule implements, next to its graph fix,

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit

calling `self.fix_plan(ctx, ctx.node(finding))` for the preconditions, then one primitive (`move_after`,
`move_before`, `remove`, `drop_bias`, ...) that finds the places the graph nodes come from in the source (the line
that creates a module, the forward line that calls it) and returns a `Change`; `ctx.edited(finding, change,
action, safe=...)` makes the record. A primitive that finds no source form raises `CannotFix` with the reason,
which the report shows (`--fix --out DIR` may still fix it).

Runs in the child process that holds the model; rules import this module only for type hints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import libcst as cst

from auditor.findings import Finding
from auditor.fixing.plan import PlanContext
from auditor.fixing.rewrite import CannotFix
from auditor.graph import Node
from auditor.sourcefix import ops as O
from auditor.sourcefix.change import Change, record
from auditor.sourcefix.source import Element, SourceFile, Unreadable, accessor, is_atom, method_name

if TYPE_CHECKING:
    import torch.nn as nn

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


@dataclass
class EditContext(PlanContext):
    findings: list[Finding] = field(default_factory=list)  # every finding of the model (a fix may ask about others)
    target: str = ""

    # --- the record -----------------------------------------------------------------------------------------------
    def edited(self, finding: Finding, change: Change, action: str, *, safe: bool) -> O.SourceEdit:
        """The record of the edit that fixes `finding`. `safe`: the model computes the same after it (applied
        without --unsafe-fixes)."""
        return record(finding, change, action, safe, self.target)

    # --- the graph fix's checks, without torch.fx ----------------------------------------------------------------
    def check_move_after(self, node: Node, anchor: Node) -> None:
        """As the graph fix checks it on an fx capture; on others, the path from `node` to `anchor` must be
        theirs alone (each value on it read by the next only)."""
        if self.can_rewrite:
            super().check_move_after(node, anchor)
        else:
            self._single_path(node, anchor)

    def check_move_before(self, node: Node, anchor: Node) -> None:
        if self.can_rewrite:
            super().check_move_before(node, anchor)
        else:
            self._single_path(anchor, node)

    def check_remove(self, node: Node) -> None:
        if self.can_rewrite:
            super().check_remove(node)

    def plan_shortcut(self, merge: Node, identity: Node, branch: Node) -> Any:
        from auditor.fixing import shortcut

        return super().plan_shortcut(merge, identity, branch) if self.can_rewrite else shortcut.plan(identity, branch, self.shortcut)

    def plan_concat(self, cat: Node) -> Any:
        from auditor.fixing import concat

        return super().plan_concat(cat) if self.can_rewrite else concat.plan(cat, cat.tensor_inputs, self.skip_concat)

    def _single_path(self, start: Node, end: Node) -> None:
        current = start
        for _ in range(len(self.graph.nodes)):
            if current is end:
                return
            if len(current.users) != 1:
                self.cannot(f"{current.label()} is read by {len(current.users)} values between {start.label()} and {end.label()}")
            current = current.users[0]
        self.cannot(f"{end.label()} does not follow {start.label()}")

    def has_finding(self, code: str, module: str | None) -> bool:
        return any(f.code == code and f.module == module for f in self.findings)

    # --- where graph nodes come from ------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        model = self.graph.model
        if model is None:
            self.cannot("no model to read")
        return model

    def submodule(self, qualname: str) -> nn.Module | None:
        try:
            return self.model.get_submodule(qualname)
        except AttributeError:
            return None

    def source(self, path: str) -> SourceFile:
        try:
            return SourceFile.read(path)
        except Unreadable as exc:
            self.cannot(str(exc))

    def creation(self, qualname: str | None) -> tuple[SourceFile, cst.Call]:
        """The call in the source that creates the module `qualname` (`nn.Dropout(0.1)` on its site's line)."""
        module = self.submodule(qualname or "")
        site = self.graph.sites.get(qualname or "")
        if module is None or site is None or not qualname:
            self.cannot(f"no line in the source creates `{qualname}`")
        file = self.source(site[0])
        name = type(module).__name__
        candidates = [c for c in file.calls_at(site[1]) if method_name(c) == name and file.line_of(c) == site[1]]
        if len(candidates) > 1:
            candidates = self._by_position_in_parent(file, qualname, candidates)
        if len(candidates) != 1:
            self.cannot(f"cannot tell which call on {site[0]}:{site[1]} creates `{qualname}`" if candidates else
                        f"no `{name}(...)` call on {site[0]}:{site[1]}, where `{qualname}` is created")
        return file, candidates[0]

    def _by_position_in_parent(self, file: SourceFile, qualname: str, candidates: list[cst.Call]) -> list[cst.Call]:
        """Of several same-class calls on one line, the one at the module's index among its container's arguments."""
        parent, _, last = qualname.rpartition(".")
        if not last.isdigit():
            return candidates
        chosen = []
        for call in candidates:
            element = file.element(call)
            if element is not None and element.appended_to is None and element.index == int(last):
                entries = file.entries(element.container)
                if not any(getattr(e, "star", "") for e in entries[: element.index]):
                    chosen.append(call)
        return chosen

    def created_alongside(self, qualname: str) -> list[str]:
        """Every module of the model created by the same line as `qualname`, of the same class (itself included):
        a loop, a helper called several times, a class instantiated more than once."""
        module = self.submodule(qualname)
        site = self.graph.sites.get(qualname)
        return [q for q, s in self.graph.sites.items() if s == site and type(self.submodule(q)) is type(module)]

    def forward_call(self, node: Node) -> Located:
        """The call in a forward method that runs `node`: a module call (`self.drop(x)`, `self.fcs[0](x)`), a
        function (`F.dropout(x, ...)`) or a tensor method (`x.relu_()`)."""
        site = node.meta.get("call_site") if node.is_module else ((node.file, node.line) if node.file else None)
        if not site or site[0] is None:
            self.cannot(f"the capture did not record the forward line that runs {node.label()}")
        file = self.source(site[0])
        wanted = self._call_name(node)
        method = node.kind == "call" and node.target.startswith("Tensor.")
        candidates = [c for c in file.calls_at(site[1]) if self._matches(c, node, wanted, method)]
        if len(candidates) > 1:
            same = [n for n in self.graph.nodes if (n.file, n.line) == (node.file, node.line) and n.module == node.module
                    and n.target == node.target and n.kind == node.kind] if not node.is_module else [node]
            if len(same) % len(candidates) == 0 and node in same:
                candidates = [candidates[same.index(node) % len(candidates)]]
        if len(candidates) != 1:
            self.cannot(f"cannot tell which call on {site[0]}:{site[1]} runs {node.label()}" if candidates else
                        f"{node.label()} is not called by name on {site[0]}:{site[1]} (through its container or a loop)")
        call = candidates[0]
        if not file.in_scope_of_statement(call):
            self.cannot(f"{node.label()} runs inside a lambda or a comprehension on {site[0]}:{site[1]}")
        slot = -1 if method else 0
        located = Located(file, call, slot)
        if slot >= 0 and not [a for a in call.args if a.keyword is None and not a.star]:
            self.cannot(f"{node.label()} on {site[0]}:{site[1]} takes its input by keyword")
        return located

    @staticmethod
    def _call_name(node: Node) -> str:
        if node.is_module:
            return (node.module or "").rpartition(".")[2]
        return node.target.rpartition(".")[2]

    @staticmethod
    def _matches(call: cst.Call, node: Node, wanted: str, method: bool) -> bool:
        if node.is_module:
            return accessor(call.func) == wanted
        if method:
            return isinstance(call.func, cst.Attribute) and call.func.attr.value == wanted
        return method_name(call) == wanted

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
        if here is None or there is None or here[0] is not there[0]:
            self.cannot("the entries are created in different blocks")
        names = {self._list_name(file, moved), self._list_name(file, target)}
        if len(names) != 1 or None in names:
            self.cannot("the entries are not added to one list")
        first, last = sorted((here[1], there[1]))
        read = file.names_in(call) - {"self"}
        if read & file.assigned_between(here[0], first + 1, last - 1 if here[1] > there[1] else last):
            self.cannot(f"`{file.code(call)}` reads names assigned between the two lines")
        code = file.code(call)
        ops: list[O.Op] = []
        if moved.appended_to is not None:
            if not _is_whole_statement(moved.container, statement):
                self.cannot("the append is part of a larger statement")
            ops.append(O.RemoveStatement(file.span(statement)))
        else:
            ops.append(O.RemoveElement(file.span(moved.container), moved.index))
        if target.appended_to is not None:
            ops.append(O.InsertStatements(file.span(anchor_statement), f"{target.appended_to}.append({code})\n", after=after))
        else:
            ops.append(O.InsertElement(file.span(target.container), target.index + (1 if after else 0), code))
        return ops

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
        if in_place is not None and statement is not None and _is_whole_statement(target.call, statement):
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

    # --- arguments ----------------------------------------------------------------------------------------------------
    def drop_bias(self, layer: Node) -> Change:
        """`bias=False` on the call that creates the layer (every layer that line creates loses its bias)."""
        import inspect

        file, call = self.creation(layer.module)
        module = self.submodule(layer.module or "")
        try:
            parameters = list(inspect.signature(type(module).__init__).parameters)[1:]
        except (TypeError, ValueError):
            parameters = []
        if "bias" not in parameters:
            self.cannot(f"`{type(module).__name__}` takes no `bias` argument")
        if any(a.star for a in call.args):
            self.cannot(f"`{file.code(call)}` passes its arguments with * or **")
        change = Change(file.path, [O.SetArgument(file.span(call), "bias", "False", parameters.index("bias"))])
        change.dropped = [f"{q}.bias" for q in self.created_alongside(layer.module or "")]
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


def _is_whole_statement(call: cst.CSTNode, statement: cst.BaseStatement) -> bool:
    return (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1
            and isinstance(statement.body[0], cst.Expr) and statement.body[0].value is call)
