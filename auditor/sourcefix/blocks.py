"""RES001 in the source: the block whose residual add mismatches, all its instances in the model, and the values
their constructors ended with, to write one projection shortcut in the class that suits every instance.

A class is one piece of source for many instances (`Bottleneck(16, 16)`, `Bottleneck(64, 16)`, ...): the shortcut's
arguments are the constructor's own names whose values are the channels and stride each mismatching instance
needs (`nn.Conv2d(inp, out, kernel_size=1, stride=stride, bias=False)`), and when only some instances mismatch, a
condition on those names picks them (`if stride != 1 or inp != out:`). A block whose values say neither is too
irregular for a source edit: the reason says so, and `--fix --out DIR` still fixes a copy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import libcst as cst

from auditor.graph import Node, ops
from auditor.sourcefix import ops as O
from auditor.sourcefix.change import Change
from auditor.sourcefix.source import SourceFile

if TYPE_CHECKING:
    from auditor.fixing.shortcut import Shortcut
    from auditor.sourcefix.context import EditContext

_NAMES = ("shortcut", "projection", "downsample")
_CONV = {1: ("Conv1d", "BatchNorm1d"), 2: ("Conv2d", "BatchNorm2d"), 3: ("Conv3d", "BatchNorm3d")}
_EMPTY = ("Sequential", "Identity")


@dataclass
class _Instance:
    qualname: str
    values: dict[str, Any]  # what its __init__ ended with
    needs: tuple[int, int, int] | None  # (channels in, channels out, stride) of its mismatching add; None: it adds fine
    runs: bool  # whether its forward ran the add


@dataclass
class Block:
    ctx: EditContext
    file: SourceFile
    merge: Node
    add: cst.CSTNode  # the `a + b` (BinaryOperation) or `a += b` (AugAssign) in forward
    init: cst.FunctionDef
    klass: cst.ClassDef
    instances: list[_Instance]

    @classmethod
    def of(cls, ctx: EditContext, merge: Node) -> Block:
        owner = ctx.submodule(merge.module or "")
        if owner is None or merge.module is None or type(owner).__module__.startswith("torch."):
            ctx.cannot("the add is not in a block class of your own")
        if merge.file is None or merge.line is None:
            ctx.cannot("the add's line is not known")
        file = ctx.source(merge.file)
        adds = [n for n in file.nodes_at(merge.line) if _is_add(n)]
        if len(adds) != 1:
            ctx.cannot(f"{'no' if not adds else 'more than one'} `+` on {merge.file}:{merge.line}")
        klass = next((a for a in file.ancestors(adds[0]) if isinstance(a, cst.ClassDef)), None)
        init = next((s for s in (klass.body.body if klass is not None else []) if isinstance(s, cst.FunctionDef) and s.name.value == "__init__"), None)
        if klass is None or init is None or klass.name.value != type(owner).__name__:
            ctx.cannot(f"the add on {merge.file}:{merge.line} is not in the forward of `{type(owner).__name__}` with an __init__ of its own")
        return cls(ctx, file, merge, adds[0], init, klass, [])

    def shortcut(self, identity_index: int, planned: Shortcut) -> tuple[Change, str]:
        self.instances = self._instances(identity_index, planned)
        wrong = [i for i in self.instances if i.needs is not None]
        values = [i.values for i in wrong]
        cin, cout, stride = (self._name_for([i.needs[k] for i in wrong], values) for k in range(3))  # type: ignore[index]
        if cin is None or cout is None or stride is None:
            self.ctx.cannot("the block's constructor values do not give the shortcut's channels and stride for every instance: too irregular for the source; --fix --out DIR fixes a copy")
        nn_name, missing = self.file.reachable("torch.nn")
        projection = self._projection(planned, nn_name, cin, cout, stride)
        operand = self._operands()[identity_index]
        change = Change(self.file.path, [O.EnsureImport(missing)] if missing else [])
        attribute = self._empty_shortcut(operand, wrong)
        widened = self._widened(attribute, cin, cout, stride) if attribute is not None else None
        if widened is not None:
            branch, condition = widened
            change.ops.append(O.Replace(self.file.span(branch.test), condition))
        else:
            condition = self._condition(cin, cout, stride)
            if attribute is not None:
                change.ops += self._assigned_after(attribute, condition, projection)
            else:
                attribute = self._fresh_attribute()
                change.ops += self._new(attribute, condition, projection, nn_name, operand, identity_index)
        holds = [i.qualname for i in self.instances if i.needs is not None or (widened is None and condition is not None and _evaluate(condition, i.values))]
        change.added = [f"{q}.{attribute}" if q else attribute for q in holds]
        if widened is not None:
            return change, f"the projection `self.{attribute}` is built when `{condition}` (the identity of these instances went through it empty)"
        where = f" when `{condition}`" if condition else ""
        return change, f"shortcut `self.{attribute}` = {projection}{where}, on the identity"

    # --- what the instances need ----------------------------------------------------------------------------------
    def _instances(self, identity_index: int, planned: Shortcut) -> list[_Instance]:
        from auditor.fixing import shortcut

        found = []
        klass = type(self.ctx.submodule(self.merge.module or ""))
        for qualname, module in self.ctx.model.named_modules():
            if type(module) is not klass:
                continue
            values = self.ctx.init_locals.get(qualname)
            if values is None:
                self.ctx.cannot(f"the constructor values of `{qualname}` were not recorded (a model built outside the tool)")
            merges = [n for n in self.ctx.graph.nodes if n.module == qualname and (n.file, n.line) == (self.merge.file, self.merge.line) and n.op in (ops.ADD, ops.SUB)]
            needs = None
            for merge in merges:
                if merge.error is None:
                    continue
                operands = merge.tensor_inputs
                if len(operands) != 2:
                    self.ctx.cannot(f"the add of `{qualname}` has {len(operands)} operands")
                plan = shortcut.plan(operands[identity_index], operands[1 - identity_index], self.ctx.shortcut)
                if plan.kind != planned.kind:
                    self.ctx.cannot(f"`{qualname}` needs a {plan.kind} shortcut where `{self.merge.module}` needs a {planned.kind} one")
                channels = (plan.identity[-1], plan.branch[-1]) if plan.kind == "linear" else (plan.identity[1], plan.branch[1])
                needs = (*channels, plan.stride)
            found.append(_Instance(qualname, values, needs, bool(merges)))
        return found

    def _name_for(self, wanted: list[int], values: list[dict[str, Any]]) -> str | None:
        """A constructor name whose value is `wanted[k]` in the k-th mismatching instance (its arguments first), else
        the number itself when it is the same for all."""
        order = self._argument_names()
        names = [n for n in dict.fromkeys([*order, *values[0]]) if all(type(v.get(n)) is int and v.get(n) == w for v, w in zip(values, wanted))]
        if names:
            return names[0]
        return str(wanted[0]) if len(set(wanted)) == 1 else None

    def _argument_names(self) -> list[str]:
        return [self.file.code(p.name) for p in self.init.params.params][1:]

    def _condition(self, cin: str, cout: str, stride: str) -> str | None:
        """None when every instance needs the shortcut; else a test on the constructor's values that is true for
        the instances whose add mismatches and false for those whose add works (and, if possible, for those that
        never run it)."""
        if all(i.needs is not None for i in self.instances):
            return None
        found = self._first_fitting(self._candidates(cin, cout, stride), lambda condition, instance: _evaluate(condition, instance.values))
        if found is None:
            self.ctx.cannot("no test on the block's constructor values picks the instances whose add mismatches: too irregular for the source; --fix --out DIR fixes a copy")
        return found

    def _candidates(self, cin: str, cout: str, stride: str) -> list[str]:
        canonical = " or ".join(c for c in (f"{stride} != 1" if not stride.isdigit() else "", f"{cin} != {cout}") if c)
        return [canonical, f"{cin} != {cout}", *self._searched()]

    def _first_fitting(self, candidates: list[str], holds: Callable[[str, _Instance], bool | None]) -> str | None:
        """The first candidate true exactly for the mismatching instances (those that never run the add included),
        else the first that is so among the instances that run it."""
        for strict in (True, False):
            for candidate in candidates:
                if all(self._fits_instance(holds(candidate, i), i, strict) for i in self.instances):
                    return candidate
        return None

    @staticmethod
    def _fits_instance(holds: bool | None, instance: _Instance, strict: bool) -> bool:
        if holds is None:
            return False
        return holds == (instance.needs is not None) or not (instance.runs or strict)

    def _searched(self) -> list[str]:
        ints = [n for n in dict.fromkeys([*self._argument_names(), *self.instances[0].values]) if all(type(i.values.get(n)) is int for i in self.instances)]
        atoms = [f"{a} != {b}" for a, b in itertools.combinations(ints, 2)] + [f"{n} != 1" for n in ints]
        ones = [f"{n} == 1" for n in ints]
        return atoms + [f"{a} or {b}" for a, b in itertools.combinations(atoms, 2)] + [f"{a} and {b}" for a in atoms for b in ones if a.split()[0] != b.split()[0]]

    # --- the source ---------------------------------------------------------------------------------------------------
    def _projection(self, planned: Shortcut, nn_name: str, cin: str, cout: str, stride: str) -> str:
        if planned.kind == "linear":
            return f"{nn_name}.Linear({cin}, {cout}, bias=False)"
        conv, norm = _CONV[planned.spatial]
        strided = f", stride={stride}" if stride != "1" else ""
        return f"{nn_name}.Sequential({nn_name}.{conv}({cin}, {cout}, kernel_size=1{strided}, bias=False), {nn_name}.{norm}({cout}))"

    def _operands(self) -> list[cst.BaseExpression]:
        if isinstance(self.add, cst.AugAssign):
            return [self.add.target, self.add.value]
        assert isinstance(self.add, cst.BinaryOperation)
        return [self.add.left, self.add.right]

    def _empty_shortcut(self, operand: cst.BaseExpression, wrong: list[_Instance]) -> str | None:
        """`shortcut` when the identity is `self.shortcut(x)` and that module is empty in every mismatching instance."""
        if not (isinstance(operand, cst.Call) and isinstance(operand.func, cst.Attribute) and self.file.code(operand.func.value) == "self"):
            return None
        attribute = operand.func.attr.value
        for instance in wrong:
            module = self.ctx.submodule(f"{instance.qualname}.{attribute}")
            if module is None or type(module).__name__ not in _EMPTY or len(list(module.children())):
                return None
        return attribute

    def _last_assignment(self, attribute: str) -> cst.BaseStatement:
        assigning = [s for s in self.init.body.body if _assigns(self.file, s, attribute)]
        if not assigning:
            self.ctx.cannot(f"`self.{attribute}` is not assigned at the top of __init__")
        return assigning[-1]

    def _widened(self, attribute: str, cin: str, cout: str, stride: str) -> tuple[cst.If, str] | None:
        """When an `if` already builds the projection for some instances (`if stride != 1:`), that test widened so
        it holds for the mismatching ones too and changes nothing for the others (`if stride != 1 or inp != out:`)."""
        last = self._last_assignment(attribute)
        if not isinstance(last, cst.If) or last.orelse is not None:
            return None
        old = self.file.code(last.test)
        before = {i.qualname: _evaluate(old, i.values) for i in self.instances}
        if None in before.values():
            return None

        def holds(candidate: str, instance: _Instance) -> bool | None:
            new = _evaluate(candidate, instance.values)
            if new is None or (before[instance.qualname] and instance.needs is None):
                return None if new is None else instance.needs is not None  # already projected: unchanged
            return bool(before[instance.qualname] or new)

        present = {part.strip() for part in old.split(" or ")}
        candidates = [c for c in self._candidates(cin, cout, stride)[1:] if not {p.strip() for p in c.split(" or ")} <= present]
        found = self._first_fitting([c for c in candidates if not any(p.strip() in present for p in c.split(" or "))] + candidates, holds)
        if found is None:
            return None
        left = old if isinstance(last.test, (cst.Comparison, cst.Name, cst.Attribute, cst.Call, cst.BooleanOperation)) and " and " not in old else f"({old})"
        right = f"({found})" if " and " in found else found
        return last, f"{left} or {right}"

    def _assigned_after(self, attribute: str, condition: str | None, projection: str) -> list[O.Op]:
        """The empty attribute gets the projection where the instances need it, right after its last assignment."""
        last = self._last_assignment(attribute)
        code = f"self.{attribute} = {projection}\n"
        if condition is not None:
            code = f"if {condition}:\n    {code}"
        return [O.InsertStatements(self.file.span(last), code, after=True)]

    def _new(self, attribute: str, condition: str | None, projection: str, nn_name: str, operand: cst.BaseExpression, index: int) -> list[O.Op]:
        """A new attribute at the end of __init__, and the identity wrapped in it in forward."""
        code = f"self.{attribute} = {projection}\n"
        if condition is not None:
            code = f"self.{attribute} = {nn_name}.Identity()\nif {condition}:\n    {code}"
        ops = [O.InsertStatements(self.file.span(self.init.body.body[-1]), code, after=True)]
        if isinstance(self.add, cst.AugAssign) and index == 0:  # `x += branch` with x the identity: x = self.s(x) + branch
            statement = self.file.statement(self.add)
            if statement is None or not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
                self.ctx.cannot("the in-place add is part of a larger statement")
            target = self.file.code(self.add.target)
            ops.append(O.Replace(self.file.span(statement), f"{target} = self.{attribute}({target}) {_plain_operator(self.add)} {self.file.code(self.add.value)}\n"))
        else:
            ops.append(O.Wrap(self.file.span(operand), f"self.{attribute}({O.HOLE})"))
        return ops

    def _fresh_attribute(self) -> str:
        used = self.file.attributes_of_self(self.klass)
        for name in _NAMES:
            if name not in used:
                return name
        self.ctx.cannot("the block already uses every name a shortcut would take")


def _is_add(node: cst.CSTNode) -> bool:
    if isinstance(node, cst.BinaryOperation):
        return isinstance(node.operator, (cst.Add, cst.Subtract))
    return isinstance(node, cst.AugAssign) and isinstance(node.operator, (cst.AddAssign, cst.SubtractAssign))


def _plain_operator(add: cst.AugAssign) -> str:
    return "+" if isinstance(add.operator, cst.AddAssign) else "-"


def _assigns(file: SourceFile, statement: cst.BaseStatement, attribute: str) -> bool:
    """Whether a statement of __init__'s body assigns `self.attribute` (itself, or in an `if` it holds)."""
    wanted = f"self.{attribute}"

    class _Finder(cst.CSTVisitor):
        found = False

        def visit_AssignTarget(self, target: cst.AssignTarget) -> None:
            if file.code(target.target) == wanted:
                _Finder.found = True

    _Finder.found = False
    statement.visit(_Finder())
    return _Finder.found


def _evaluate(condition: str, values: dict[str, Any]) -> bool | None:
    """A test on plain constructor values (`stride != 1 or inp != out`); None when it names something else."""
    try:
        return bool(eval(compile(condition, "<condition>", "eval"), {"__builtins__": {}}, dict(values)))  # noqa: S307 - names and numbers only
    except Exception:  # noqa: BLE001 - a name the instance does not have, an attribute: not decidable here
        return None
