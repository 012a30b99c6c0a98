"""Initializations in the user's source: the user call that drew a weight last (the build's record names it,
`Dist.writes`) becomes the init a rule asks for, for every tensor it draws; a layer left at its constructor's
default gets the init right after the line creating it. A mixin of `EditContext`."""

from __future__ import annotations

import re
from typing import Any

import libcst as cst

from auditor.fixing.rewrite import CannotFix
from auditor.graph import Node
from auditor.sourcefix import ops as O
from auditor.sourcefix.change import Change
from auditor.sourcefix.source import SourceFile, first_argument, is_whole_statement, method_name


class Inits:
    """`reinit`, `reinit_for`, `orthogonal_gates` (and what they read of the record), for `EditContext`."""

    def reinit(self, qualname: str, tensor: str, function: str, arguments: str = "") -> Change:
        """Draw `qualname.tensor` with `torch.nn.init.<function>(tensor, arguments)`: in place of the user's call
        that drew it (every tensor that call draws gets it), or, for a layer left at its constructor's default,
        right after the line that creates it."""
        extra = f", {arguments}" if arguments else ""
        return self._redraw(qualname, tensor, lambda init, drawn, names: (f"{init}.{function}({drawn}{extra})", False),
                            lambda init, module, names: f"{init}.{function}({module}.{tensor}{extra})\n")

    def reinit_for(self, qualname: str, tensor: str, activation: Node | None, fans: tuple[int, int] | None = None) -> tuple[Change, str]:
        """`reinit` with the init the graph fix draws for the activation that follows (He for the ReLU family,
        Xavier otherwise: `auditor.fixing.init.scheme_for`); returns the change and its description. `fans`: the
        (fan-in, fan-out) the forward reads the weight with, where it may differ from nn.init's (`x @ w` reads a
        weight stored (in, out): He then counts nn.init's fan-out, `mode="fan_out"`)."""
        from auditor.fixing.init import init_call_for

        function, arguments = init_call_for(activation.op if activation is not None else None, activation.attrs if activation is not None else None)
        if fans is not None and function == "kaiming_normal_" and self._transposed(_joined(qualname, tensor), fans):
            arguments = ", ".join([*([arguments] if arguments else []), 'mode="fan_out"'])
        shown = ", ".join([tensor, arguments] if arguments else [tensor])
        return self.reinit(qualname, tensor, function, arguments), f"{tensor} => nn.init.{function}({shown})"

    def _transposed(self, name: str, fans: tuple[int, int]) -> bool:
        """Whether the forward's fans of parameter `name` are nn.init's swapped (the two differ)."""
        import torch

        stored = torch.nn.init._calculate_fan_in_and_fan_out(self.model.get_parameter(name))
        if tuple(fans) == tuple(stored):
            return False
        if tuple(fans) != tuple(reversed(stored)):
            self.cannot(f"`{name}` is applied with fans {fans[0]} in, {fans[1]} out, which nn.init's modes do not read")
        return True

    def first_drawn_alike(self, node: Node, code: str) -> Node:
        """Of the layers the same init call draws (a loop over `self.modules()`), the first in the graph with a
        finding of `code`: its init is the one a shared call gets. `node` itself when its init was not recorded."""
        try:
            drawn = {name.rpartition(".")[0] for name in self.drawn_alongside(node.module or "", "weight")}
        except CannotFix:
            return node
        flagged = [n for n in self.graph.nodes if n.is_module and n.module in drawn and self.has_finding(code, n.module)]
        return flagged[0] if flagged else node

    def orthogonal_gates(self, qualname: str, tensor: str, gates: int) -> Change:
        """Each gate block of a recurrent weight drawn with `nn.init.orthogonal_`, per gate (a plain RNN's one block
        whole): in place of the user's call that drew it, or after the line creating the layer (a loop over its
        `weight_hh` tensors)."""
        def in_place(init: str, drawn: str, names: dict[str, str]) -> tuple[str, bool]:
            if gates == 1:  # a plain RNN: one block, the call itself
                return f"{init}.orthogonal_({drawn})", False
            gate = names["gate"]
            return f"for {gate} in {drawn}.data.chunk({gates}):\n    {init}.orthogonal_({gate})\n", True

        def after(init: str, module: str, names: dict[str, str]) -> str:
            name, weight, gate = names["name"], names["weight"], names["gate"]
            draw = (f"{init}.orthogonal_({weight})\n" if gates == 1 else
                    f"for {gate} in {weight}.data.chunk({gates}):\n            {init}.orthogonal_({gate})\n")
            return f"for {name}, {weight} in {module}.named_parameters():\n    if {name}.startswith(\"weight_hh\"):\n        {draw}"

        return self._redraw(qualname, tensor, in_place, after, variables=("name", "weight", "gate"))

    def writes(self, qualname: str, tensor: str) -> tuple[tuple[str, int, str], ...]:
        """The user's calls that drew the whole tensor last: (file, line, name), the drawing call first."""
        pieces = self._pieces(_joined(qualname, tensor))
        writes = {dist.writes for _, _, dist in pieces}
        if len(writes) != 1 or not next(iter(writes)):
            self.cannot(f"`{_joined(qualname, tensor)}` is drawn in parts, or by code the build's record could not follow")
        return next(iter(writes))

    def drawn_alongside(self, qualname: str, tensor: str) -> list[str]:
        """Every parameter the same user call drew last (an init loop over `self.modules()`, an `apply` function)."""
        writes = self.writes(qualname, tensor)
        return [name for name in self.record.named if self._same_writes(name, writes)]

    def _same_writes(self, name: str, writes: tuple[tuple[str, int, str], ...]) -> bool:
        init = self.record.named.get(name)
        pieces = getattr(init, "pieces", None) or []
        return bool(pieces) and all(dist.writes == writes for _, _, dist in pieces)

    def _pieces(self, name: str) -> list[Any]:
        init = self.record.named.get(name) if self.record is not None else None
        pieces = getattr(init, "pieces", None)
        if not pieces:
            self.cannot(f"how `{name}` was initialized is not known (no record of its build)")
        return pieces

    def _redraw(self, qualname: str, tensor: str, in_place: Any, after: Any, variables: tuple[str, ...] = ()) -> Change:
        """The edit that draws the tensor anew: `in_place(init, tensor code, names)` replaces the user's call (an
        expression, or with True a statement), `after(init, module code, names)` follows the creation of a layer left
        at its default; `names` holds a fresh local name for each of `variables`."""
        writes = self.writes(qualname, tensor)
        if len(writes) > 1:
            lines = ", ".join(f"{w[0]}:{w[1]}" for w in writes)
            self.cannot(f"`{_joined(qualname, tensor)}` is drawn in {len(writes)} steps ({lines}): re-initialize it by hand")
        path, line, name = writes[0]
        file = self.source(path)
        init, missing = file.reachable("torch.nn.init")
        imports = [O.EnsureImport(missing)] if missing else []
        calls = file.calls_named(line, [name])
        if not calls:
            if self.graph.sites.get(qualname) != (path, line):
                self.cannot(f"no `{name}(...)` on {path}:{line}, which drew `{_joined(qualname, tensor)}`")
            change = self._after_creation(qualname, lambda module, names: after(init, module, names), variables)
            change.ops += imports
            return change
        if len(calls) > 1:
            self.cannot(f"several `{name}(...)` calls on {path}:{line}")
        for other in self.drawn_alongside(qualname, tensor):
            if self.model.get_parameter(other).dim() < 2:
                self.cannot(f"the call on {path}:{line} also draws `{other}`, which has fewer than 2 dimensions")
        call = calls[0]
        drawn = self._drawn_tensor(file, call)
        scope = file.function(call) or file.module
        code, statement_form = in_place(init, drawn, {v: file.fresh_name(scope, v) for v in variables})
        statement = file.statement(call)
        if statement_form:
            if statement is None or not is_whole_statement(call, statement):
                self.cannot(f"`{file.code(call)}` is part of a larger statement")
            return Change(file.path, [O.Replace(file.span(statement), code), *imports])
        return Change(file.path, [O.Replace(file.span(call), code), *imports])

    def _drawn_tensor(self, file: SourceFile, call: cst.Call) -> str:
        """The tensor an init call draws: the first argument of `nn.init.normal_(w, ...)`, the receiver of
        `w.normal_(...)`."""
        func = call.func
        receiver = file.code(func.value) if isinstance(func, cst.Attribute) else ""
        if isinstance(func, cst.Name) or receiver.split(".")[-1] == "init":
            argument = first_argument(call, "tensor")
            if argument is None:
                self.cannot(f"`{file.code(call)}` names no tensor")
            return file.code(argument.value)
        return receiver

    def _after_creation(self, qualname: str, statements: Any, variables: tuple[str, ...] = ()) -> Change:
        """Statements right after the one creating `qualname`, with the module named as it is assigned there
        (`self.lstm`), or first given a name of its own when it is created inside an expression
        (`layers += [nn.Linear(64, 64), nn.ReLU()]` -> `linear = nn.Linear(64, 64)`, then the statements)."""
        file, call = self.creation(qualname)
        statement = file.statement(call)
        if statement is None:
            self.cannot(f"`{qualname}` is created inside an expression that runs more than once (a comprehension, a lambda)")
        scope = file.function(call) or file.module
        names = {v: file.fresh_name(scope, v) for v in variables}
        small = file.small_statement(call)
        if isinstance(small, cst.Assign) and small.value is call and len(small.targets) == 1 and len(statement.body) == 1 \
                and isinstance(small.targets[0].target, (cst.Name, cst.Attribute)):
            return Change(file.path, [O.InsertStatements(file.span(statement), statements(file.code(small.targets[0].target), names), after=True)])
        for ancestor in file.ancestors(call):
            if ancestor is statement:
                break
            if isinstance(ancestor, (cst.IfExp, cst.BooleanOperation)):
                self.cannot(f"`{qualname}` is created only under a condition inside its statement")
        same = [c for c in file.calls_in(statement) if method_name(c) == method_name(call)]  # each edit names its own
        base = re.sub(r"\d+d$", "", (method_name(call) or "layer").lower()) or "layer"
        name = file.fresh_name(scope, base if len(same) < 2 else f"{base}_{same.index(call) + 1}")
        return Change(file.path, [O.Replace(file.span(call), name),
                                  O.InsertStatements(file.span(statement), f"{name} = {file.code(call)}\n" + statements(name, names))])


def _joined(qualname: str, tensor: str) -> str:
    """A parameter's name in the model: `fc.weight`, or `weight` of the root module (qualname "")."""
    return f"{qualname}.{tensor}" if qualname else tensor
