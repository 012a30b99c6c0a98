"""What a rule's `fix(ctx, finding)` sees: the copy of the model being fixed and the primitives to change it.

A fixable rule implements

    def fix_plan(self, ctx: PlanContext, node: Node) -> Any      # preconditions, read-only (see plan.py)
    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None

`fix` calls `self.fix_plan(ctx, ctx.node(finding))`, carries the plan out with the primitives below and returns
`ctx.fixed(finding, "before => after")`, or calls `ctx.cannot(reason)`. The graph (`ctx.graph`) was captured from
the copy, so its nodes' modules (`node.obj`, `ctx.module(name)`) are the copy's and never the user's. Graph
rewrites need a torch.fx capture (`ctx.can_rewrite`); module-level changes (re-inits, bias folding) work for
every capture. Every change is journaled (graph edits, and the tensors a fix writes, which are copied from the
user's on first write), so the fix loop can undo one fix without a copy of the model.

A model built without its weights (`ctx.without_weights`, on meta) has no values to write: the re-init
primitives plan the init instead (`initplan.py`; the written code draws it), and `fold_bias` only drops the bias.
A fix reads a weight's init with `ctx.init_of(param)`, never its values.

Rules import this module only for type hints: everything is reached through `ctx`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from auditor.findings import AppliedFix, Finding
from auditor.fixing import rewrite
from auditor.fixing.initplan import InitPlan
from auditor.fixing.plan import PlanContext
from auditor.fixing.rewrite import CannotFix, Stale
from auditor.fixing.workspace import Workspace
from auditor.graph import Node

if TYPE_CHECKING:
    import torch
    import torch.fx as fx
    import torch.nn as nn

    from auditor.graph.inits import Init

__all__ = ["FixContext", "CannotFix", "Stale"]


@dataclass
class FixContext(PlanContext):
    workspace: Workspace | None = None  # the copy being fixed
    inputs: tuple[Any, ...] = ()  # the example inputs
    seed: int = 0
    reshaped: bool = False  # a rewrite changed value shapes: the graph's recorded shapes downstream are stale
    bypassed: list[fx.Node] = field(default_factory=list)  # removed from the dataflow, erased at the end
    stale_after: list[fx.Node] = field(default_factory=list)  # values whose recorded shapes (and downstream) a fix changed
    finding: Finding | None = None  # the finding being fixed (set by the fix loop): named by planned inits

    @property
    def model(self) -> nn.Module:
        """The copy being fixed (for fx captures, the GraphModule the rewrites edit)."""
        assert self.workspace is not None
        return self.workspace.model

    @property
    def journal(self) -> rewrite.Journal:
        assert self.workspace is not None
        return self.workspace.journal

    @property
    def without_weights(self) -> bool:
        """The model is fixed without its weights (built on meta): inits are planned, not drawn."""
        return self._plan is not None

    @property
    def _plan(self) -> InitPlan | None:
        return self.workspace.inits if self.workspace is not None else None

    # --- reading --------------------------------------------------------------------------------------------
    def init_of(self, param: torch.Tensor) -> Init | None:
        """What is known of a weight's initial values (as `GraphContext.init_of`): read from its values, or from
        the planned inits of a model without weights."""
        if self._plan is not None:
            return self._plan.init_of(param)
        from auditor.graph.inits import measured

        return measured(param)

    def audit_node(self, fx_node: fx.Node) -> Node | None:
        """The graph node of an fx node (None for nodes a rewrite created)."""
        try:
            found = self.graph.node(fx_node.name)
        except KeyError:
            return None
        return found if found.meta.get("fx_node") is fx_node else None

    def shape(self, node: Node | fx.Node) -> tuple[int, ...] | None:
        """The shape a node produced in the capture's forward."""
        found = node if isinstance(node, Node) else self.audit_node(node)
        return found.shape if found is not None else None

    def module(self, qualname: str | None) -> nn.Module:
        """A submodule of the copy being fixed."""
        if qualname is None:
            raise CannotFix("the finding names no module")
        try:
            return self.model.get_submodule(qualname)
        except AttributeError:
            raise Stale(f"module `{qualname}` is gone") from None

    def ancestors(self, node: Node | fx.Node) -> set[fx.Node]:
        return rewrite.ancestors(self.fx(node))

    # --- graph rewrites (fx captures) -----------------------------------------------------------------------
    def move_after(self, node: Node, anchor: Node) -> None:
        """Move the unary op `node` (a dropout) to right after `anchor`, downstream of it."""
        rewrite.move_after(self.gm, self.fx(node), self.fx(anchor), self.journal)

    def move_before(self, node: Node, anchor: Node) -> None:
        """Move the unary op `node` (a norm) to right before `anchor`, upstream of it."""
        rewrite.move_before(self.gm, self.fx(node), self.fx(anchor), self.journal)

    def remove(self, node: Node) -> None:
        """Take the unary op `node` out: its users read its input."""
        fx_node = self.fx(node)
        rewrite.bypass(fx_node, self.journal)
        self.bypassed.append(fx_node)

    def add_module(self, wanted: str, module: nn.Module) -> str:
        """Register a new submodule (on the model's device and dtype) under `wanted` or a free variant of
        it; returns the name used."""
        return rewrite.add_module(self.gm, wanted, module.to(**self._placement()), self.journal)

    def insert_before(self, anchor: Node | fx.Node, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> fx.Node:
        """A new `call_module` / `call_function` / `call_method` node right before `anchor`. Args may mix
        graph nodes and fx nodes. Marks the graph's shapes stale (later fixes that read them wait for a new
        capture)."""
        self.reshaped = True
        fx_args = tuple(self.fx(a) if isinstance(a, Node) else a for a in args)
        return rewrite.insert_before(self.gm, self.fx(anchor), op, target, fx_args, kwargs, self.journal)

    def replace_input(self, user: Node | fx.Node, old: Node | fx.Node, new: fx.Node) -> None:
        """`user` reads `new` where it read `old`."""
        rewrite.replace_input(self.fx(user), self.fx(old), new, self.journal)

    def insert_shortcut(self, merge: Node, identity: Node, branch: Node) -> str:
        """RES001: a shortcut between `identity` and the add `merge` (a 1x1 conv + BN with the stride, a
        zero-pad one with `--shortcut pad`, or a Linear projection for features); returns the action text."""
        import torch

        planned = self.plan_shortcut(merge, identity, branch)
        value: Node | fx.Node = identity
        name = f"{merge.module}.shortcut" if merge.module else "shortcut"
        if planned.has_parameters:
            with torch.device("meta") if self.without_weights else contextlib.nullcontext():
                built = planned.build(self._fill, name)
            name = self.add_module(name, built)
            for call in planned.calls(name):
                value = self.insert_before(merge, "call_module", call, (value,))
        else:
            for function, extra in planned.functions():
                value = self.insert_before(merge, "call_function", function, (value, *extra))
        self.replace_input(merge, identity, value if not isinstance(value, Node) else self.fx(value))
        if merge.shape != planned.branch:  # the capture went on with the identity: what follows was measured wrong
            self.stale_after.append(self.fx(merge))
        return planned.describe(name)

    def align_concat(self, cat: Node) -> str:
        """RES004: zero-pad the smaller operands of a concatenation to the largest size (or, with
        `--skip-concat crop`, center-crop the larger to the smallest) in every dim but the concatenated one;
        returns the action text."""
        planned = self.plan_concat(cat)
        operands = cat.tensor_inputs
        for operand, step in zip(operands, planned.steps):
            if step is not None:
                function, extra = step
                self.replace_input(cat, operand, self.insert_before(cat, "call_function", function, (operand, *extra)))
        if cat.shape != planned.output:  # the capture went on with another stand-in: what follows was measured wrong
            self.stale_after.append(self.fx(cat))
        return planned.describe([o.label() for o in operands])

    # --- module-level changes (every capture) ---------------------------------------------------------------
    def generator(self, key: str) -> torch.Generator:
        """A CPU generator seeded from the run's seed and `key` (use the tensor's qualified name)."""
        from auditor.fixing.init import generator

        return generator(self.seed, key)

    def reinit(self, qualname: str, tensor_name: str, activation: Node | str | None = None) -> str:
        """Re-initialize `qualname.tensor_name` for the activation that follows (He for the ReLU family,
        Xavier with tanh's or unit gain otherwise); returns the scheme's description."""
        from auditor.fixing.init import scheme_for

        if self._tensor(qualname, tensor_name).dim() < 2:
            raise CannotFix(f"`{qualname}.{tensor_name}` has fewer than 2 dimensions: no fan-in to scale by")
        op = activation.op if isinstance(activation, Node) else activation
        attrs = activation.attrs if isinstance(activation, Node) else None
        description, fill = scheme_for(op, attrs)
        self.reinit_with(qualname, tensor_name, fill)
        return description

    def reinit_with(self, qualname: str, tensor_name: str, fill: Callable[[torch.Tensor, torch.Generator], Any]) -> None:
        """Re-initialize a tensor with `fill(cpu_tensor, generator)`, seeded."""
        self._fill(self._target(qualname, tensor_name), f"{qualname}.{tensor_name}", fill)

    def reinit_with_module(self, module: nn.Module, tensor_name: str, fill: Callable[[torch.Tensor, torch.Generator], Any], key: str) -> None:
        """Seeded init of a tensor of a module not (yet) in the model, e.g. a new shortcut."""
        self._fill(getattr(module, tensor_name), f"{key}.{tensor_name}", fill)

    def orthogonal_gates(self, qualname: str, tensor_name: str, gates: int | None = None) -> int:
        """Each gate block of a recurrent weight orthogonal (LSTM 4 blocks, GRU 3, RNN 1); returns the count."""
        from auditor.fixing.init import gate_count, orthogonal_gates

        gates = gates or gate_count(self.module(qualname))
        self._fill(self._target(qualname, tensor_name), f"{qualname}.{tensor_name}", orthogonal_gates(gates))
        return gates

    def reset_parameters(self, qualname: str) -> None:
        """The module type's own default init (`reset_parameters()`), seeded, without touching the global RNG
        state (drawn on a CPU copy, then copied in place)."""
        import copy

        import torch

        module = self.module(qualname)
        if not callable(getattr(module, "reset_parameters", None)):
            raise CannotFix(f"`{qualname}` ({type(module).__name__}) has no reset_parameters()")
        if self._plan is not None:  # the module's own init, recorded on a copy of it (on meta: no values)
            scratch = copy.deepcopy(module)
            self._plan.plan(list(zip(module.parameters(), scratch.parameters())), scratch.reset_parameters, self._why())
            return
        scratch = copy.deepcopy(module).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.generator(qualname).initial_seed()) % (2**63))
            scratch.reset_parameters()
        fresh = dict(scratch.named_parameters())
        with torch.no_grad():
            for name, _ in module.named_parameters():
                owner, _, leaf = name.rpartition(".")
                self._writable(f"{qualname}.{owner}" if owner else qualname, leaf).copy_(fresh[name])

    def fold_bias(self, layer: Node, norm: Node) -> str:
        """Drop a conv/linear's bias and fold it into the BatchNorm's running mean: BN(x + b) with running mean
        mu equals BN(x) with running mean mu - b, and in training the batch mean cancels b anyway. Without
        weights there is no value to fold: the bias is only dropped. Returns what became of the bias."""
        import torch

        self.check_fold_bias(layer, norm)
        assert self.workspace is not None and layer.module is not None and norm.module is not None
        conv, bn = self.module(layer.module), self.module(norm.module)
        bias = getattr(conv, "bias", None)
        if not isinstance(bias, torch.Tensor):
            self.cannot(f"`{layer.module}` has no bias")
        self.workspace.set_tensor(conv, "bias", None)
        if self.without_weights:
            return "no weights, so nothing to fold"
        if getattr(bn, "running_mean", None) is None:
            return f"`{norm.module}` keeps no running mean"
        with torch.no_grad():
            self._writable(norm.module, "running_mean").sub_(bias.detach().to(bn.running_mean.dtype))
        return f"folded into `{norm.module}.running_mean`"

    def is_constant(self, tensor: torch.Tensor) -> bool:
        from auditor.fixing.init import is_constant

        return is_constant(tensor)

    # --- outcome --------------------------------------------------------------------------------------------
    def fixed(self, finding: Finding, action: str, *, safe: bool = False) -> AppliedFix:
        """The record of a fix that was applied. `safe`: the outputs are provably unchanged (the fix loop
        verifies it on the example inputs and undoes the fix if they are not)."""
        return AppliedFix(code=finding.code, module=finding.module, action=action, safe=safe)

    # --- internals ------------------------------------------------------------------------------------------
    def _tensor(self, qualname: str, tensor_name: str) -> torch.Tensor:
        tensor = getattr(self.module(qualname), tensor_name, None)
        if tensor is None:
            raise CannotFix(f"`{qualname}` has no tensor `{tensor_name}`")
        return tensor

    def _writable(self, qualname: str, tensor_name: str) -> torch.Tensor:
        """The tensor, owned by the copy (copy-on-write) and journaled, ready to change in place."""
        assert self.workspace is not None
        self._tensor(qualname, tensor_name)
        return self.workspace.writable(self.module(qualname), tensor_name)

    def _target(self, qualname: str, tensor_name: str) -> torch.Tensor:
        """The tensor a re-init fills: the copy's own (copy-on-write), or on meta the parameter itself, whose init
        is planned and never written."""
        return self._tensor(qualname, tensor_name) if self.without_weights else self._writable(qualname, tensor_name)

    def _fill(self, tensor: torch.Tensor, key: str, fill: Callable[[torch.Tensor, torch.Generator], Any]) -> None:
        from auditor.fixing.init import reinit

        generator = self.generator(key)
        if self._plan is not None:
            self._plan.plan([(tensor, tensor)], lambda: fill(tensor, generator), self._why())
        else:
            reinit(tensor, fill, generator)

    def _why(self) -> str:
        """How a planned init names the fix that planned it (a comment in the written INITS)."""
        if self.finding is None:
            return "--fix"
        return f"--fix {self.finding.code} [{self.finding.module or '<root>'}]"

    def _placement(self) -> dict[str, Any]:
        for tensor in list(self.model.parameters()) + list(self.model.buffers()):
            if tensor.is_floating_point():
                return {"device": tensor.device, "dtype": tensor.dtype}
        return {}
