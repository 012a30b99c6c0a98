"""Whether a finding can be fixed, decided once, for the audit and for the fix alike.

A fixable rule states its fix's preconditions in `fix_plan(ctx, node)`: it reads the graph through a
`PlanContext` (whose checks are the rewrite primitives' own, run read-only) and returns what the fix needs, or
raises `CannotFix` with the reason. The audit calls it to set each finding's `fixable` flag (`judge`), and the
rule's `fix` calls it again before it edits, on the graph being fixed. Nothing is copied or changed to find out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from auditor.findings import Finding
from auditor.fixing import concat, rewrite, shortcut
from auditor.fixing.rewrite import CannotFix, Stale
from auditor.graph import MODULE, AuditGraph, Node, ops
from auditor.options import FixOptions

if TYPE_CHECKING:
    from torch.fx import GraphModule
    from torch.fx import Node as FxNode

# Ops a dropout may be moved past without changing what the dropout means (it still acts on the same units).
SETTLE_THROUGH = frozenset({ops.BATCH_NORM}) | ops.ACTIVATIONS


@dataclass
class PlanContext:
    """What a rule's `fix_plan` reads. Every node it visits is remembered (`read`): the fix loop applies, in one
    pass, only the fixes that read nothing an earlier fix of the pass has changed."""

    graph: AuditGraph
    shortcut: str = "conv"  # RES001: "conv" (1x1 conv + BN) or "pad" (parameter-free)
    skip_concat: str = "pad"  # RES004: "pad" the smaller operands or "crop" the larger
    settings: dict[str, Any] = field(default_factory=dict)
    read: set[Any] = field(default_factory=set)  # fx nodes (fx captures) the plans looked at
    _positions: dict[int, int] | None = field(default=None, repr=False)
    _calls: dict[str | None, list[Node]] | None = field(default=None, repr=False)

    # --- reading --------------------------------------------------------------------------------------------
    @property
    def can_rewrite(self) -> bool:
        """Whether graph rewrites are possible (the model was captured with torch.fx)."""
        return self.graph.method == "fx" and self.graph.meta.get("graph_module") is not None

    @property
    def gm(self) -> GraphModule:
        if not self.can_rewrite:
            raise CannotFix(f"this fix rewrites the graph, which needs a torch.fx capture (this model was captured with {self.graph.method})")
        return self.graph.meta["graph_module"]

    def node(self, finding: Finding) -> Node:
        """The graph node a finding points at."""
        if finding.node is None:
            raise CannotFix("the finding names no graph node")
        try:
            found = self.graph.node(finding.node)
        except KeyError:
            raise Stale(f"node `{finding.node}` is gone") from None
        self._saw(found)
        return found

    def fx(self, node: Node | FxNode) -> FxNode:
        """The fx node behind a graph node (graph rewrites only)."""
        gm = self.gm
        if not isinstance(node, Node):
            return node
        fx_node = node.meta.get("fx_node")
        if fx_node is None or fx_node.graph is not gm.graph:
            raise Stale(f"node `{node.name}` is not in the graph being rewritten")
        return fx_node

    def position(self, node: Node) -> int:
        """Where a node comes in the graph's execution order (indexed once per context)."""
        if self._positions is None:
            self._positions = {id(n): i for i, n in enumerate(self.graph.nodes)}
        return self._positions.get(id(node), 0)

    def calls(self, qualname: str | None) -> list[Node]:
        """Every call of the module `qualname` in the graph (a shared module is called more than once)."""
        if self._calls is None:
            self._calls = {}
            for n in self.graph.nodes:
                if n.kind == MODULE:
                    self._calls.setdefault(n.module, []).append(n)
        return list(self._calls.get(qualname, []))

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
        for visited in path:
            self._saw(visited)
        return path

    @staticmethod
    def chain(*nodes: Node | Sequence[Node]) -> str:
        """`Linear -> Dropout -> Tanh`: how an action shows nodes in order (module class, or the function)."""
        flat: list[Node] = []
        for item in nodes:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        return " -> ".join(n.module_type or n.target for n in flat)

    def cannot(self, reason: str) -> NoReturn:
        """The fix does not apply here; `reason` tells the user why (and what to do instead)."""
        raise CannotFix(reason)

    # --- the primitives' preconditions (read-only) ------------------------------------------------------------
    def check_move_after(self, node: Node, anchor: Node) -> None:
        """`move_after(node, anchor)` would succeed."""
        path, late = rewrite.check_move_after(self.gm, self.fx(node), self.fx(anchor))
        self._saw_fx(path, late, self.fx(anchor).users)

    def check_move_before(self, node: Node, anchor: Node) -> None:
        """`move_before(node, anchor)` would succeed."""
        path = rewrite.check_move_before(self.gm, self.fx(node), self.fx(anchor))
        self._saw_fx(path, self.fx(node).users, [rewrite.tensor_input(self.fx(anchor))])

    def check_remove(self, node: Node) -> None:
        """`remove(node)` would succeed."""
        fx_node = self.fx(node)
        self._saw_fx([fx_node, rewrite.tensor_input(fx_node)], fx_node.users)

    def check_fold_bias(self, layer: Node, norm: Node) -> None:
        """`fold_bias(layer, norm)` would succeed."""
        if not layer.is_module or not norm.is_module:
            self.cannot("the layer or the norm is a function call: drop the bias by hand")
        for node in (layer, norm):
            if len(self.calls(node.module)) != 1:
                self.cannot(f"`{node.module}` is called more than once: its bias or statistics matter elsewhere")
        bias = layer.params.get("bias")
        if bias is None:
            self.cannot(f"`{layer.module}` has no bias")
        if bias.numel() != norm.attrs.get("num_features", -1):
            self.cannot(f"the bias of `{layer.module}` ({bias.numel()}) does not match the channels of `{norm.module}`")

    def plan_shortcut(self, merge: Node, identity: Node, branch: Node) -> shortcut.Shortcut:
        """The shortcut `insert_shortcut(merge, identity, branch)` would insert."""
        planned = shortcut.plan(identity, branch, self.shortcut)
        self._saw_fx([self.fx(merge), self.fx(identity)])
        return planned

    def plan_concat(self, cat: Node) -> concat.Alignment:
        """How `align_concat(cat)` would make the concatenated operands the same size."""
        planned = concat.plan(cat, cat.tensor_inputs, self.skip_concat)
        self._saw_fx([self.fx(cat), *(self.fx(o) for o in cat.tensor_inputs)])
        return planned

    # --- internals ------------------------------------------------------------------------------------------
    def _saw(self, node: Node) -> None:
        fx_node = node.meta.get("fx_node")
        if fx_node is not None:
            self.read.add(fx_node)

    def _saw_fx(self, *groups: Any) -> None:
        for group in groups:
            self.read.update(group)


def why_not(rule: Any, ctx: PlanContext, finding: Finding) -> str | None:
    """None when `rule`'s fix applies to `finding` on this graph, else the reason it does not."""
    if getattr(rule, "fix", None) is None:
        return "this rule has no automatic fix"
    try:
        rule.fix_plan(ctx, ctx.node(finding))
    except CannotFix as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug in a plan: not fixable, and said so
        return f"the fix's check failed internally ({type(exc).__name__}: {exc})"
    return None


def reasons(graph: AuditGraph, findings: list[Finding], options: FixOptions | None = None) -> list[str | None]:
    """For each finding of a fixable rule: None when `--fix` would apply its fix, else why not. A model whose
    forward fails at a node no fix repairs, or stops further on (a partial graph: the capture already tried what
    a repaired merge would compute), gets no fixed model at all (--fix writes only models that run), so then
    none of its findings is fixable."""
    from auditor.rule import find_rule

    if graph.model is None:  # a saved program: no model code to fix
        return ["a saved torch.export program has no model code to fix" for _ in findings]
    chosen = options or FixOptions(out=None)
    ctx = PlanContext(graph=graph, shortcut=chosen.shortcut, skip_concat=chosen.skip_concat)
    verdicts: list[str | None] = []
    for finding in findings:
        rule = find_rule(finding.code)
        if rule is None or not rule.fixable:
            verdicts.append("this rule has no automatic fix")
        else:
            verdicts.append(why_not(rule, ctx, finding))
    if any(v is None for v in verdicts) and ctx.can_rewrite:
        from auditor.fixing.codegen import unwritable

        problem = unwritable(ctx.gm)
        if problem is not None:
            verdicts = [v or f"--fix cannot write this model's code ({problem})" for v in verdicts]
    repaired = {f.node for f, v in zip(findings, verdicts) if v is None}
    broken = [n for n in graph.nodes if n.error is not None and n.name not in repaired]
    if broken:
        where = f"{broken[0].label()}" + (f" ({broken[0].file}:{broken[0].line})" if broken[0].file else "")
        blocked = f"the forward fails at {where}, which --fix cannot repair, so no fixed model would be written"
        verdicts = [v or blocked for v in verdicts]
    elif graph.stopped is not None:
        verdicts = [v or "the forward pass stops further on (a partial graph), so no fixed model would run or be written"
                    for v in verdicts]
    return verdicts


def judge(graph: AuditGraph, findings: list[Finding], options: FixOptions | None = None) -> list[Finding]:
    """The findings with `fixable` true exactly where `--fix` (with these options) would apply the rule's fix."""
    verdicts = reasons(graph, findings, options)
    return [replace(f, fixable=False) if f.fixable and v is not None else f for f, v in zip(findings, verdicts)]
