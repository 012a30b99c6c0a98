"""What a rule's `source_fix(ctx, finding)` sees: the audited graph (a `PlanContext`, so `fix_plan` runs on it
unchanged) and the primitives that turn the graph fix's intent into edits of the user's file.

A fixable rule implements, next to its graph fix,

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit

calling `self.fix_plan(ctx, ctx.node(finding))` for the preconditions, then one primitive (`move_after`,
`move_before`, `remove` from `moves.py`; `reinit`, `orthogonal_gates` from `inits.py`; `drop_bias`,
`add_shortcut`, `align_concat` here) that finds the places the graph nodes come from in the source (the line that
creates a module, the forward line that calls it, the call that drew a weight) and returns a `Change`; `ctx.edited(finding, change,
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
from auditor.sourcefix.inits import Inits
from auditor.sourcefix.moves import Located, Moves
from auditor.sourcefix.source import SourceFile, Unreadable, accessor, method_name

if TYPE_CHECKING:
    import torch.nn as nn

@dataclass
class EditContext(Moves, Inits, PlanContext):
    findings: list[Finding] = field(default_factory=list)  # every finding of the model (a fix may ask about others)
    target: str = ""
    record: Any = None  # the build's init record (loading/inits.py): which user call drew each weight
    init_locals: dict[str, dict[str, Any]] = field(default_factory=dict)  # per user-class instance: its __init__'s values

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
        candidates = file.calls_named(site[1], [name])
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
        """Every module of the model created by the same call as `qualname`, of the same class (itself included):
        a loop, a helper called several times, a class instantiated more than once. Of a line with several calls of
        that class (`nn.Sequential(nn.Linear(10, 32), ..., nn.Linear(32, 2))`), those at the same entry."""
        module = self.submodule(qualname)
        site = self.graph.sites.get(qualname)
        same_line = [q for q, s in self.graph.sites.items() if s == site and type(self.submodule(q)) is type(module)]
        if len(same_line) < 2 or site is None:
            return same_line
        file = self.source(site[0])
        if len(file.calls_named(site[1], [type(module).__name__])) < 2:
            return same_line
        _, call = self.creation(qualname)
        return [q for q in same_line if self._created_by(q) is call]

    def _created_by(self, qualname: str) -> cst.Call | None:
        try:
            return self.creation(qualname)[1]
        except CannotFix:
            return None

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

    # --- arguments ----------------------------------------------------------------------------------------------------
    def drop_bias(self, layer: Node, norm: Node | None = None, kept: list[str] | None = None) -> Change:
        """`bias=False` on the call that creates the layer (every layer that line creates loses its bias). When the
        line also creates layers that keep theirs (`kept`: a block helper called with `bn=False`), `bias=not bn`:
        the test under which `norm` is created, in the same function, read from its parameters alone."""
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
        value = f"not {self._creation_test(file, call, norm)}" if kept and norm is not None else "False"
        change = Change(file.path, [O.SetArgument(file.span(call), "bias", value, parameters.index("bias"))])
        change.dropped = [f"{q}.bias" for q in self.created_alongside(layer.module or "") if q not in (kept or [])]
        return change

    def _creation_test(self, file: SourceFile, call: cst.Call, norm: Node) -> str:
        """The test of the one `if` that creates `norm` (in its body), in the function that makes `call` and not
        around `call`, reading the function's parameters only: as code negated as a whole (`bn`, `(a and b)`)."""
        norm_file, norm_call = self.creation(norm.module)
        function = file.function(call)
        if norm_file is not file or function is None or file.function(norm_call) is not function:
            self.cannot(f"`{norm.module}` is not created in the function that creates the layer")
        tests, child = [], norm_call
        for ancestor in file.ancestors(norm_call):
            if ancestor is function:
                break
            if isinstance(ancestor, cst.If) and child is ancestor.body:
                tests.append(ancestor)
            elif isinstance(ancestor, (cst.If, cst.Else, cst.For, cst.While, cst.Try, cst.With)):
                self.cannot(f"`{norm.module}` is created under more than one `if` in its function")
            child = ancestor
        if len(tests) != 1 or tests[0] in set(file.ancestors(call)):
            self.cannot(f"`{norm.module}` is not created under one `if` of its own")
        parameters = {p.name.value for p in [*function.params.posonly_params, *function.params.params, *function.params.kwonly_params]}
        read = file.names_in(tests[0].test)
        if not read or not read <= parameters:
            self.cannot(f"`if {file.code(tests[0].test)}:` reads more than the parameters of `{function.name.value}`")
        test = file.code(tests[0].test)
        return test if isinstance(tests[0].test, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) else f"({test})"

    # --- shortcuts ----------------------------------------------------------------------------------------------------
    def add_shortcut(self, merge: Node, identity: Node, branch: Node) -> tuple[Change, str]:
        """RES001 in the block's class: a 1x1 conv + BN (or Linear) projection built in `__init__` for the instances
        whose add mismatches (a condition on the constructor's own values when only some do), applied to the
        identity in `forward`; or, when the identity already goes through an empty `self.shortcut`, that attribute
        given the projection (kuangliu's `if stride != 1 or in_planes != planes:`). Returns the change and its
        description."""
        from auditor.sourcefix import blocks

        planned = self.plan_shortcut(merge, identity, branch)
        if planned.kind not in ("conv", "linear"):
            self.cannot("a zero-pad shortcut is not written into the source: --fix --out DIR writes it, or use the default 1x1 conv")
        block = blocks.Block.of(self, merge)
        return block.shortcut(merge.tensor_inputs.index(identity), planned)

    def align_concat(self, cat: Node) -> Change:
        """RES004 in forward: the smaller operand of the `torch.cat` zero-padded to the other's size just before it,
        the odd pixel on the far side (milesial/Pytorch-UNet's `Up.forward`), computed from the tensors' sizes so
        that every input size and every instance of the block is aligned."""
        planned = self.plan_concat(cat)
        if planned.mode != "pad":
            self.cannot("--skip-concat crop is written by --fix --out DIR only; in the source, the default zero-padding")
        padded = [i for i, step in enumerate(planned.steps) if step is not None]
        if len(cat.tensor_inputs) != 2 or len(padded) != 1:
            self.cannot("the concatenation has more than two operands, or both need changing: align them by hand")
        located = self.forward_call(cat)
        file, sequence = located.file, located.input
        if not isinstance(sequence, (cst.List, cst.Tuple)) or len(sequence.elements) != 2:
            self.cannot(f"`{file.code(located.call)}` does not list its two operands")
        target, reference = sequence.elements[padded[0]].value, sequence.elements[1 - padded[0]].value
        if not isinstance(reference, cst.Name):
            self.cannot(f"`{file.code(reference)}`, the operand to match, is not a variable")
        statement = file.statement(located.call)
        if statement is None:
            self.cannot("the concatenation is not in a statement of a block")
        rank = len(planned.target)
        dims = [d for d in range(2, rank) if d != planned.dim]
        if planned.dim >= 2 or not dims:
            self.cannot("the operands are concatenated along a spatial dim")
        scope = file.function(located.call) or file.module
        axes = {1: ["diff"], 2: ["diff_y", "diff_x"], 3: ["diff_z", "diff_y", "diff_x"]}.get(len(dims)) or [f"diff_{d}" for d in dims]
        names = [file.fresh_name(scope, axis) for axis in axes]
        functional, missing = file.reachable("torch.nn.functional")
        change = Change(file.path, [O.EnsureImport(missing)] if missing else [])
        if isinstance(target, cst.Name) and not file.read_after(statement, target.value):
            value, prelude = target.value, ""
        else:
            value = file.fresh_name(scope, accessor(target.func) if isinstance(target, cst.Call) and accessor(target.func) else "aligned")
            prelude = f"{value} = {file.code(target)}\n"
            change.ops.append(O.Replace(file.span(target), value))
        sizes = "".join(f"{name} = {reference.value}.size({d}) - {value}.size({d})\n" for name, d in zip(names, dims))
        amounts = ", ".join(f"{n} // 2, {n} - {n} // 2" for n in reversed(names))
        change.ops.append(O.InsertStatements(file.span(statement), f"{prelude}{sizes}{value} = {functional}.pad({value}, [{amounts}])\n"))
        return change
