"""What a rule's `fix(ctx, finding)` sees: the rewritable copy of the model and the primitives to change it.

A fixable rule implements

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None

and returns `ctx.fixed(finding, "before => after")` once it changed the model, or calls `ctx.cannot(reason)`
(or returns None) when the fix does not apply here. The graph (`ctx.graph`) was captured from the copy, so its
nodes' modules (`node.obj`, `ctx.module(name)`) are the copy's and never the user's. Graph rewrites need a
torch.fx capture (`ctx.can_rewrite`); without one they raise `CannotFix`, and the engine notes why. Module-level
changes (re-inits, bias folding) work for every capture.

Rules import this module only for type hints: everything is reached through `ctx`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from auditor.findings import AppliedFix, Finding
from auditor.fixing.rewrite import CannotFix, Stale
from auditor.graph import MODULE, AuditGraph, Node, ops

if TYPE_CHECKING:
    import torch
    import torch.fx as fx
    import torch.nn as nn

__all__ = ["FixContext", "CannotFix", "Stale"]

# Ops a dropout may be moved past without changing what the dropout means (it still acts on the same units).
SETTLE_THROUGH = frozenset({ops.BATCH_NORM}) | ops.ACTIVATIONS


@dataclass
class FixContext:
    graph: AuditGraph  # captured from the copy being fixed
    model: nn.Module  # the copy being fixed (for fx captures, the GraphModule the rewrites edit)
    inputs: tuple[Any, ...]  # the example inputs
    shortcut: str = "conv"  # RES001: "conv" (1x1 conv + BN) or "pad" (parameter-free)
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    reshaped: bool = False  # a rewrite changed value shapes: the graph's recorded shapes are stale

    # --- reading --------------------------------------------------------------------------------------------
    @property
    def can_rewrite(self) -> bool:
        """Whether graph rewrites are possible (the model was captured with torch.fx)."""
        return self.graph.method == "fx" and self.graph.meta.get("graph_module") is not None

    @property
    def gm(self) -> fx.GraphModule:
        if not self.can_rewrite:
            raise CannotFix(f"this fix rewrites the graph, which needs a torch.fx capture (this model was captured with {self.graph.method})")
        return self.graph.meta["graph_module"]

    def node(self, finding: Finding) -> Node:
        """The graph node a finding points at."""
        if finding.node is None:
            raise CannotFix("the finding names no graph node")
        try:
            return self.graph.node(finding.node)
        except KeyError:
            raise Stale(f"node `{finding.node}` is gone") from None

    def fx(self, node: Node | fx.Node) -> fx.Node:
        """The fx node behind a graph node (graph rewrites only)."""
        gm = self.gm
        if not isinstance(node, Node):
            return node
        fx_node = node.meta.get("fx_node")
        if fx_node is None or fx_node.graph is not gm.graph:
            raise Stale(f"node `{node.name}` is not in the graph being rewritten")
        return fx_node

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

    def calls(self, qualname: str | None) -> list[Node]:
        """Every call of the module `qualname` in the graph (a shared module is called more than once)."""
        return [n for n in self.graph.nodes if n.kind == MODULE and n.module == qualname]

    def activation_after(self, node: Node) -> Node | None:
        """The activation a node's output reaches first (through reshapes and dropout), if that comes before
        any other layer."""
        for successor in self.graph.successors(node, through=ops.TRANSPARENT | {ops.DROPOUT}):
            if ops.is_activation(successor.op):
                return successor
        return None

    def settle_path(self, node: Node) -> list[Node]:
        """`node` and the BatchNorms and activations that directly follow it (each the single consumer of the
        one before, dropouts in between passed too): a dropout moved past `node` belongs after the last of
        them (after the last norm and its activation), or it would sit before a norm or an activation again."""
        path = [node]
        current = node
        while True:
            users = self.graph.successors(current)
            if len(users) != 1 or users[0].op not in SETTLE_THROUGH | {ops.DROPOUT} or len(current.users) != 1:
                break
            current = users[0]
            if current.op != ops.DROPOUT:
                path.append(current)
        return path

    @staticmethod
    def chain(*nodes: Node | Sequence[Node]) -> str:
        """`Linear -> Dropout -> Tanh`: how an action shows nodes in order (module class, or the function)."""
        flat: list[Node] = []
        for item in nodes:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        return " -> ".join(n.module_type or n.target for n in flat)

    # --- graph rewrites (fx captures) -----------------------------------------------------------------------
    def move_after(self, node: Node, anchor: Node) -> None:
        """Move the unary op `node` (a dropout) to right after `anchor`, downstream of it."""
        from auditor.fixing import rewrite

        rewrite.move_after(self.gm, self.fx(node), self.fx(anchor))

    def move_before(self, node: Node, anchor: Node) -> None:
        """Move the unary op `node` (a norm) to right before `anchor`, upstream of it."""
        from auditor.fixing import rewrite

        rewrite.move_before(self.gm, self.fx(node), self.fx(anchor))

    def remove(self, node: Node) -> None:
        """Take the unary op `node` out: its users read its input."""
        from auditor.fixing import rewrite

        rewrite.remove(self.gm, self.fx(node))

    def add_module(self, wanted: str, module: nn.Module) -> str:
        """Register a new submodule (on the model's device and dtype) under `wanted` or a free variant of
        it; returns the name used."""
        from auditor.fixing import rewrite

        return rewrite.add_module(self.gm, wanted, module.to(**self._placement()))

    def insert_before(self, anchor: Node | fx.Node, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> fx.Node:
        """A new `call_module` / `call_function` / `call_method` node right before `anchor`. Args may mix
        graph nodes and fx nodes. Marks the graph's shapes stale (the round ends after this fix)."""
        from auditor.fixing import rewrite

        self.reshaped = True
        fx_args = tuple(self.fx(a) if isinstance(a, Node) else a for a in args)
        return rewrite.insert_before(self.gm, self.fx(anchor), op, target, fx_args, kwargs)

    def replace_input(self, user: Node | fx.Node, old: Node | fx.Node, new: fx.Node) -> None:
        """`user` reads `new` where it read `old`; then the graph is checked and recompiled."""
        from auditor.fixing import rewrite

        self.fx(user).replace_input_with(self.fx(old), new)
        rewrite.finish(self.gm)

    def ancestors(self, node: Node | fx.Node) -> set[fx.Node]:
        from auditor.fixing import rewrite

        return rewrite.ancestors(self.fx(node))

    # --- module-level changes (every capture) ---------------------------------------------------------------
    def generator(self, key: str) -> torch.Generator:
        """A CPU generator seeded from the run's seed and `key` (use the tensor's qualified name)."""
        from auditor.fixing.init import generator

        return generator(self.seed, key)

    def reinit(self, qualname: str, tensor_name: str, activation: Node | str | None = None) -> str:
        """Re-initialize `qualname.tensor_name` for the activation that follows (He for the ReLU family,
        Xavier with tanh's or unit gain otherwise); returns the scheme's description."""
        from auditor.fixing.init import reinit, scheme_for

        tensor = self._tensor(qualname, tensor_name)
        if tensor.dim() < 2:
            raise CannotFix(f"`{qualname}.{tensor_name}` has fewer than 2 dimensions: no fan-in to scale by")
        op = activation.op if isinstance(activation, Node) else activation
        attrs = activation.attrs if isinstance(activation, Node) else None
        description, fill = scheme_for(op, attrs)
        reinit(tensor, fill, self.generator(f"{qualname}.{tensor_name}"))
        return description

    def reinit_with(self, qualname: str, tensor_name: str, fill: Callable[[torch.Tensor, torch.Generator], Any]) -> None:
        """Re-initialize a tensor with `fill(cpu_tensor, generator)`, seeded."""
        from auditor.fixing.init import reinit

        reinit(self._tensor(qualname, tensor_name), fill, self.generator(f"{qualname}.{tensor_name}"))

    def reinit_with_module(self, module: nn.Module, tensor_name: str, fill: Callable[[torch.Tensor, torch.Generator], Any], key: str) -> None:
        """Seeded init of a tensor of a module not (yet) in the model, e.g. a new shortcut."""
        from auditor.fixing.init import reinit

        reinit(getattr(module, tensor_name), fill, self.generator(f"{key}.{tensor_name}"))

    def orthogonal_gates(self, qualname: str, tensor_name: str, gates: int | None = None) -> int:
        """Each gate block of a recurrent weight orthogonal (LSTM 4 blocks, GRU 3, RNN 1); returns the count."""
        from auditor.fixing.init import gate_count, orthogonal_gates

        gates = gates or gate_count(self.module(qualname))
        orthogonal_gates(self._tensor(qualname, tensor_name), gates, self.generator(f"{qualname}.{tensor_name}"))
        return gates

    def reset_parameters(self, qualname: str) -> None:
        """The module type's own default init (`reset_parameters()`), seeded, without touching the global RNG
        state (drawn on a CPU copy, then copied in place)."""
        import copy

        import torch

        module = self.module(qualname)
        if not callable(getattr(module, "reset_parameters", None)):
            raise CannotFix(f"`{qualname}` ({type(module).__name__}) has no reset_parameters()")
        scratch = copy.deepcopy(module).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.generator(qualname).initial_seed()) % (2**63))
            scratch.reset_parameters()
        with torch.no_grad():
            fresh = dict(scratch.named_parameters())
            for name, tensor in module.named_parameters():
                tensor.copy_(fresh[name].to(tensor.dtype))

    def fold_bias(self, layer: Node, norm: Node) -> None:
        """Drop a conv/linear's bias and fold it into the BatchNorm's running mean: BN(x + b) with running mean
        mu equals BN(x) with running mean mu - b, and in training the batch mean cancels b anyway."""
        import torch

        if not layer.is_module or not norm.is_module:
            self.cannot("the layer or the norm is a function call: drop the bias by hand")
        for node in (layer, norm):
            if len(self.calls(node.module)) != 1:
                self.cannot(f"`{node.module}` is called more than once: its bias or statistics matter elsewhere")
        conv, bn = self.module(layer.module), self.module(norm.module)
        bias = getattr(conv, "bias", None)
        if not isinstance(bias, torch.Tensor):
            self.cannot(f"`{layer.module}` has no bias")
        if bias.numel() != getattr(bn, "num_features", -1):
            self.cannot(f"the bias of `{layer.module}` ({bias.numel()}) does not match the channels of `{norm.module}`")
        with torch.no_grad():
            if getattr(bn, "running_mean", None) is not None:
                bn.running_mean.sub_(bias.detach().to(bn.running_mean.dtype))
        conv.register_parameter("bias", None)

    def insert_shortcut(self, merge: Node, identity: Node, branch: Node) -> str:
        """RES001: a shortcut between `identity` and the add `merge` (a 1x1 conv + BN with the stride, a
        zero-pad one with `--shortcut pad`, or a Linear projection for features); returns the action text."""
        from auditor.fixing.shortcut import insert_shortcut

        return insert_shortcut(self, merge, identity, branch)

    def is_constant(self, tensor: torch.Tensor) -> bool:
        from auditor.fixing.init import is_constant

        return is_constant(tensor)

    # --- outcome --------------------------------------------------------------------------------------------
    def fixed(self, finding: Finding, action: str, *, safe: bool = False) -> AppliedFix:
        """The record of a fix that was applied. `safe`: the outputs are provably unchanged (the engine
        verifies it on the example inputs and reverts the fix if they are not)."""
        return AppliedFix(code=finding.code, module=finding.module, action=action, safe=safe)

    def cannot(self, reason: str) -> NoReturn:
        """The fix does not apply here; `reason` tells the user why (and what to do instead)."""
        raise CannotFix(reason)

    # --- internals ------------------------------------------------------------------------------------------
    def _tensor(self, qualname: str, tensor_name: str) -> torch.Tensor:
        module = self.module(qualname)
        tensor = getattr(module, tensor_name, None)
        if tensor is None:
            raise CannotFix(f"`{qualname}` has no tensor `{tensor_name}`")
        return tensor

    def _placement(self) -> dict[str, Any]:
        for tensor in list(self.model.parameters()) + list(self.model.buffers()):
            if tensor.is_floating_point():
                return {"device": tensor.device, "dtype": tensor.dtype}
        return {}

