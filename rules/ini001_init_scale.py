from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import Downstream, attention_nodes, downstream, ends_branch
from auditor.graph.weights import WeightUse, weight_uses

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.findings import AppliedFix
    from auditor.fixing import FixContext, PlanContext
    from auditor.sourcefix import EditContext, SourceEdit

# Below this relative spread a weight is constant: INI003's finding, not a scale.
_CONSTANT = 1e-3
# Transformer-style init: normal / truncated normal with std 0.02 (BERT, GPT-2, ViT), in a model with LayerNorm.
_TRANSFORMER_STD = 0.02
# A layer counts toward a run's drift when it is at least this far off in the run's direction.
_CONTRIBUTES = 1.2


@dataclass
class _Layer:
    use: WeightUse
    std: float  # as the forward applies it: the weight's std times the constants it is scaled by
    fan_in: int
    fan_out: int
    method: str  # "He", "Xavier" or "LeCun": the canonical init for what follows
    follows: str  # "the ReLU `act`", "no activation"
    expected: float  # std of the canonical init
    ratio: float  # measured std / the nearest accepted convention (1.0 inside the accepted range)
    after: Downstream
    next: list[_Layer] = field(default_factory=list)
    previous: list[_Layer] = field(default_factory=list)
    size: int = 0  # number of weights (the sample the std is estimated from)
    source: str = "values"  # where the std comes from: the values, or the recorded init call (model built on meta)

    @property
    def node(self) -> Node:
        return self.use.node


@register
class InitScale(Rule):
    """
    ## What it does
    Compares the standard deviation of every dense weight the forward applies with what the layer needs to keep
    the signal's scale, given what follows it in the graph before the next weight layer: He init (std = gain /
    sqrt(fan_in), gain sqrt(2) for ReLU, sqrt(2 / (1 + a^2)) for LeakyReLU(a)) when a ReLU-family activation
    follows, Xavier init (std = gain * sqrt(2 / (fan_in + fan_out)), gain 5/3 for tanh, 1 for sigmoid or no
    activation) or its fan-in form (LeCun) otherwise; gain 1 or the ReLU gain for GELU/SiLU-like activations.
    The fan-out mode (`kaiming_normal_(mode="fan_out")`) is accepted where it is a documented init mode:
    convolutions. The message reports the measured and the expected std.

    Fans come from how the graph applies the weight, not from the module's class: a Linear's or a
    (transposed) convolution's weight, GPT-2's `Conv1D` (`x @ w` with w stored as (in, out)), one expert's
    slice of a fused mixture-of-experts tensor (`F.linear(x, w[e])`, `grouped_mm(x, w.mT)`), a raw
    `nn.Parameter` in `torch.mm(x, w)`, `F.linear` or `F.conv2d`. The std judged is the one the forward
    applies: constant factors between the previous non-linearity and the next one count (T5 scales the decoder
    output by d_model ** -0.5 before its tied output layer). A weight used in a way its fans cannot be read
    from (through `einsum`, or computed from other weights) is named in a note.

    It stays silent where the scale does not matter or is deliberate:
    - a normalization layer (BatchNorm, LayerNorm, GroupNorm...) comes before the next weight layer: the norm
      cancels any scale;
    - a small or zero init of the last layer of a residual or gated branch (feeding an add or a product), of a
      factor of a product of two values (attention queries and keys), or of the network's last layer
      (zero-init heads, Fixup, "zero gamma"-style tricks);
    - the transformer convention of std 0.02 (normal or truncated normal) in a model with LayerNorm, RMSNorm or
      attention;
    - PyTorch's default init (about 0.41x He for ReLU) in shallow or normalized networks;
    - constant weights (INI003 reports them) and frozen weights.

    It fires where the scale hurts:
    - a single layer more than `init-excess-ratio` (default 3) times above the largest accepted convention: 9x
      the signal's variance at that layer alone, further than any common init lands (Xavier and He differ by
      at most sqrt(2), PyTorch's default init is below both);
    - a single layer more than `init-gross-ratio` (default 10) times below the smallest, or the network's last
      layer that far above (its scale sets the initial logits', it does not compound through depth): small
      inits are a convention of major code bases (std 0.01 or 0.02 on every layer), so one small layer alone
      is judged loosely, and their compounding by the run rule below;
    - a run of at least `init-run-length` (default 4) consecutive un-normalized layers, with no skip
      connection in between, whose deviations compound to a factor of `init-run-drift` (default 100) or more
      in the signal's scale at initialization (PyTorch's default init, 0.41x He, does that in 6 plain ReLU
      layers).

    ## Why is this bad?
    Without normalization, every layer multiplies the scale of the signal (forward) and of the gradient
    (backward) by roughly std * sqrt(fan_in) * gain. A factor away from 1 compounds geometrically with depth:
    activations and gradients vanish or explode before training starts, and deep plain networks fail to
    converge (He et al. could not train a 30-layer ReLU network with Xavier init).

    ## Example
    ```python
    layers = []
    for _ in range(8):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)   # 0.16x He: the signal shrinks ~6x per layer
    ```

    ## Use instead
    ```python
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    ```

    ## Fix
    `--fix` re-initializes the flagged layers with He (`kaiming_normal_` with the gain of the activation that
    follows) or Xavier (`xavier_normal_`) init, and zeroes their biases. This changes the model's weights. In your
    file the init call that drew the weight (`nn.init.normal_(m.weight, std=0.01)`, in `__init__`, a loop over
    `self.modules()` or the function `apply` runs) becomes that init, for every layer it draws; a layer left at
    PyTorch's default gets the init right after the line creating it.

    ## Fix safety
    Unsafe: the weights change (applied with `--unsafe-fixes`).

    ## References
    He, Zhang, Ren, Sun, "Delving Deep into Rectifiers", ICCV 2015; Glorot & Bengio, "Understanding the
    difficulty of training deep feedforward neural networks", AISTATS 2010; Zhang, Dauphin, Ma, "Fixup
    Initialization", ICLR 2019; Devlin et al., "BERT", NAACL 2019 (std 0.02 truncated normal init).
    """

    code = "INI001"
    name = "init-scale"
    severity = Severity.WARNING
    summary = "weight std far from He (ReLU family follows) or Xavier (tanh/sigmoid/none follows)"
    fix_title = "Re-initialize with He / Xavier init for the activation that follows"
    fix_safety = "unsafe"
    settings = {"init-excess-ratio": 3.0, "init-gross-ratio": 10.0, "init-run-length": 4, "init-run-drift": 100.0}

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        excess = float(ctx.setting("init-excess-ratio"))
        gross = float(ctx.setting("init-gross-ratio"))
        run_length = int(ctx.setting("init-run-length"))
        drift = float(ctx.setting("init-run-drift"))
        # a transformer: its std-0.02 convention (BERT, GPT, ViT) holds, whatever its norm (MobileBERT's NoNorm)
        transformer = any(n.op in (ops.LAYER_NORM, ops.RMS_NORM) for n in ctx.graph.nodes) or bool(attention_nodes(ctx.graph))
        order = {id(n): i for i, n in enumerate(ctx.graph.nodes)}
        layers = _measure(ctx, order)
        for layer in layers.values():
            layer.next = [layers[id(w)] for w in layer.after.weights if id(w) in layers]
            for nxt in layer.next:
                nxt.previous.append(layer)
        reported: set[int] = set()
        for layer in layers.values():
            if _deliberate(layer, transformer):
                continue
            if layer.ratio >= (gross if _is_head(layer) else excess) or layer.ratio <= 1 / gross:
                reported.add(id(layer.node))
                yield self.finding(_describe(layer) + "; re-initialize it" + _advice(layer), at=layer.node)
        candidates = [l for l in layers.values() if not _deliberate(l, transformer)]
        for direction in (-1, 1):
            for run in _drifting_runs(candidates, direction, run_length, math.log(drift)):
                total = math.exp(sum(math.log(l.ratio) for l in run))
                scale = f"{total:.2g}x" if total >= 1 else f"1/{1 / total:.0f}"
                for layer in run:
                    if id(layer.node) in reported or not _contributes(layer, direction):
                        continue
                    reported.add(id(layer.node))
                    others = len(run) - 1
                    yield self.finding(
                        f"{_describe(layer)}; with the {others} other un-normalized layers of its chain "
                        f"({run[0].node.label()} to {run[-1].node.label()}) the signal's scale changes by {scale} "
                        f"at init; re-initialize them{_advice(layer)}",
                        at=layer.node,
                    )

    def fix_plan(self, ctx: PlanContext, node: Node) -> WeightUse:
        """The weight the node applies, as the check judged it; it must be a module's attribute (a Linear's
        weight, a raw `nn.Parameter` of the user's module)."""
        use = next((u for u in weight_uses(ctx.graph)[0] if u.node is node), None)
        if use is None:
            ctx.cannot(f"{node.label()} applies no weight this rule judges")
        return use

    def fix(self, ctx: FixContext, finding: Finding) -> AppliedFix | None:
        """Re-initialize the weight (seeded) with the init the check measures against (divided by the constant the
        forward scales it by), and zero a module's bias. A weight tied to others is re-initialized for all of
        them, and the fix says so."""
        import torch

        node = ctx.node(finding)
        use = self.fix_plan(ctx, node)
        owner, _, attr = use.name.rpartition(".")
        activation = min(downstream(node).activations, key=ctx.position, default=None)
        method, gains, follows = _init_for(activation)
        std = _std(method, gains[0], use.fan_in, use.fan_out) / abs(use.scale or 1.0)
        init = ctx.init_of(use.weight)
        moments = init.std_mean() if init is not None else None
        before = f"weight std {moments[0]:.3g}" if moments is not None else "weight"
        tied = [name for name in _names_of(ctx.graph.model, use.weight) if name != use.name]
        ctx.reinit_with(owner, attr, lambda t, g: torch.nn.init.normal_(t, 0.0, std, generator=g))
        module = ctx.module(node.module) if node.is_module else None
        biased = module is not None and isinstance(getattr(module, "bias", None), torch.Tensor)
        if biased:
            ctx.reinit_with(node.module, "bias", lambda t, g: torch.nn.init.zeros_(t))
        also = f"; tied to {', '.join(f'`{n}`' for n in tied)}, which change{'s' if len(tied) == 1 else ''} too" if tied else ""
        return ctx.fixed(finding, f"{before} => {method} normal std {std:.3g} ({follows}){', bias zeroed' if biased else ''}{also}")

    def source_fix(self, ctx: EditContext, finding: Finding) -> SourceEdit:
        """The init call that drew the weight becomes He / Xavier for what follows; one call may draw several
        layers (a loop over `self.modules()`): they all get the init the first flagged one calls for."""
        node = ctx.node(finding)
        use = self.fix_plan(ctx, node)
        owner, _, attr = use.name.rpartition(".")
        first = ctx.first_drawn_alike(node, self.code)
        activation = min(downstream(first).activations, key=ctx.position, default=None)
        change, action = ctx.reinit_for(owner, attr, activation, fans=(use.fan_in, use.fan_out))
        return ctx.edited(finding, change, action, safe=False)


def _names_of(model: object, weight: object) -> list[str]:
    """Every name the model holds `weight` under (tied weights: an embedding and its output layer)."""
    named = getattr(model, "named_parameters", None)
    if named is None:
        return []
    return [name for name, p in named(remove_duplicate=False) if p is weight]


def _measure(ctx: GraphContext, order: dict[int, int]) -> dict[int, _Layer]:
    """Every dense weight the forward applies whose init is known (a conv/linear module's, or a parameter used
    in `x @ w`, `F.linear`, `F.conv2d`), measured against the init its successor calls for, with the fans of
    the layout the op reads it in. Weights whose fans cannot be read from the graph are noted."""
    layers: dict[int, _Layer] = {}
    seen: set[int] = set()
    uses, unjudged = weight_uses(ctx.graph)
    for use in uses:
        weight = use.weight
        if id(weight) in seen:
            continue  # a shared or tied weight: judged at its first use
        seen.add(id(weight))
        after = downstream(use.node)
        if after.norms:
            continue  # scale-invariant: not even worth measuring
        init = ctx.init_of(weight)
        moments = init.std_mean() if init is not None else None
        if moments is None:
            continue  # values not known (loaded into a model built without weights): the engine notes it
        std, mean = moments
        if not math.isfinite(std) or std <= _CONSTANT * abs(mean):
            continue  # constant or non-finite: other rules' business
        std *= abs(use.scale)
        activation = min(after.activations, key=lambda n: order.get(id(n), 0), default=None)
        method, gains, follows = _init_for(activation)
        expected = _std(method, gains[0], use.fan_in, use.fan_out)
        accepted = [_std(m, g, use.fan_in, use.fan_out) for m in _variants(method, use.fan_out_mode) for g in gains]
        low, high = min(accepted), max(accepted)
        ratio = std / high if std > high else std / low if std < low else 1.0
        layers[id(use.node)] = _Layer(
            use, std, use.fan_in, use.fan_out, method, follows, expected, ratio, after, size=int(weight.numel()), source=init.how
        )
    judged = {id(use.weight) for use in uses}
    for name, why in {item.name: item.why for item in unjudged if id(item.weight) not in judged}.items():
        ctx.note(f"INI001: the init of `{name}` is not judged: {why}")
    return layers


def _init_for(activation: Node | None) -> tuple[str, list[float], str]:
    """(canonical init, accepted gains with the canonical first, how to name what follows)."""
    if activation is None:
        return "Xavier", [1.0], "no activation follows"
    label = f"{activation.label()} follows"
    op = activation.op
    if op == "leaky_relu":
        slope = activation.attrs.get("negative_slope", 0.01)
        slope = float(slope) if isinstance(slope, (int, float)) else 0.01
        return "He", [math.sqrt(2.0 / (1 + slope**2))], label
    if op in ops.RELU_FAMILY:
        return "He", [math.sqrt(2.0)], label
    if op == "selu":
        return "LeCun", [1.0], label
    if op in ops.RELU_LIKE:  # GELU, SiLU, ELU, ...: initialized with the ReLU gain or with gain 1 in practice
        return "He", [math.sqrt(2.0), 1.0], label
    if op == "tanh":
        return "Xavier", [5.0 / 3.0, 1.0], label
    return "Xavier", [1.0], label


def _variants(method: str, fan_out_mode: bool) -> list[str]:
    """The conventions accepted for a canonical init: the fan-in mode, Xavier's fan average, and the fan-out mode
    only where it is a documented init mode (convolutions: `kaiming_normal_(mode="fan_out")`)."""
    variants = ["He"] if method == "He" else ["Xavier", "LeCun"]
    return variants + ["He-fan-out"] if fan_out_mode else variants


def _std(method: str, gain: float, fan_in: int, fan_out: int) -> float:
    if method == "He" or method == "LeCun":
        return gain / math.sqrt(fan_in)
    if method == "He-fan-out":
        return gain / math.sqrt(fan_out)
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def _deliberate(layer: _Layer, transformer: bool) -> bool:
    """Whether the layer's scale does not matter (a norm follows) or is a known deliberate choice."""
    after = layer.after
    if after.norms:
        return True
    if layer.ratio < 1 and (ends_branch(after) or _is_head(layer) or any(m.op == ops.MATMUL for m in after.merges)):
        # small/zero init of a residual or gated branch's last layer, of the head, or of a factor of a product of
        # two values (attention queries and keys: T5 folds the 1/sqrt(d) scaling into the query's init)
        return True
    if transformer and _transformer_style(layer):
        return True
    return False


def _is_head(layer: _Layer) -> bool:
    """The network's last layer: its output reaches the model's output with no weight layer after it."""
    return layer.after.reaches_output and not layer.after.weights


def _transformer_style(layer: _Layer) -> bool:
    """Whether the measured std is consistent with 0.02: within 50%, plus three standard errors of a std
    estimated from `n` samples (about 1/sqrt(2n) relative), which matters for tiny layers such as CaiT's
    4x4 talking-heads projections."""
    tolerance = 0.5 + 3 / math.sqrt(2 * max(layer.size, 1))
    return abs(layer.std / abs(layer.use.scale) / _TRANSFORMER_STD - 1) <= tolerance  # the weight's own std


def _contributes(layer: _Layer, direction: int) -> bool:
    return layer.ratio <= 1 / _CONTRIBUTES if direction < 0 else layer.ratio >= _CONTRIBUTES


def _drifting_runs(layers: list[_Layer], direction: int, min_length: int, min_log: float) -> list[list[_Layer]]:
    """Chains of consecutive layers (each feeding the next with no norm or merge between) whose log std ratios
    add up to at least `min_log` in `direction` (-1: shrinking, 1: growing): the most drifting contiguous part
    of every chain, as in Kadane's maximum-subarray scan along the graph."""
    allowed = {id(l.node) for l in layers}
    best: dict[int, tuple[float, list[_Layer]]] = {}
    for layer in layers:  # graph order: predecessors first
        score = direction * math.log(layer.ratio)
        prefix = [best[id(p.node)] for p in layer.previous if id(p.node) in allowed and id(p.node) in best]
        top = max(prefix, key=lambda item: item[0], default=(0.0, []))
        best[id(layer.node)] = (top[0] + score, top[1] + [layer]) if top[0] > 0 else (score, [layer])
    runs: list[list[_Layer]] = []
    ends = sorted(best.values(), key=lambda item: -item[0])
    covered: set[int] = set()
    for score, run in ends:
        if score < min_log or len(run) < min_length or all(id(l.node) in covered for l in run):
            continue
        covered.update(id(l.node) for l in run)
        runs.append(run)
    return runs


def _describe(layer: _Layer) -> str:
    recorded = "" if layer.source == "values" else f" (from {layer.source})"
    use = layer.use
    what = layer.node.label() if layer.node.is_module else f"weight `{use.name}` ({use.node.label()})"
    scale = abs(use.scale)
    applied = f"weight std {layer.std / scale:.3g}{recorded}, {layer.std:.3g} as applied (the forward scales it by {use.scale:.3g})" \
        if scale != 1 else f"weight std {layer.std:.3g}{recorded}"
    return (
        f"{what} has {applied}, {layer.std / layer.expected:.2g}x the "
        f"{layer.expected:.3g} of {layer.method} init "
        f"({layer.follows}; fan_in {layer.fan_in}, fan_out {layer.fan_out})"
    )


def _advice(layer: _Layer) -> str:
    if layer.method == "He":
        return " with nn.init.kaiming_normal_ for the activation that follows"
    if layer.method == "LeCun":
        return " with nn.init.kaiming_normal_(nonlinearity='linear')"
    return " with nn.init.xavier_normal_ (gain nn.init.calculate_gain of the activation)"
