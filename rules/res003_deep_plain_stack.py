from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import PARAM, AuditGraph, Node, ops
from auditor.graph.weights import applies_weight
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import DENSE, PRODUCTS, SKIP_MERGES, downstream, is_depthwise, merges_two_values


@register
class DeepPlainStack(Rule):
    """
    ## What it does
    Measures, for every weight layer, the length of the shortest chain of weight layers (convolutions,
    linear layers, bilinear layers, recurrent layers) that leads to it from the input, where a skip connection
    (a residual add or a concatenation, as in ResNet, DenseNet or U-Net, or a gate multiplying its input, as in
    squeeze-and-excitation) counts as a shortcut, and flags a chain longer than `max-plain-depth` (default 20)
    or, when most of its layers are followed by a normalization, longer than `max-normalized-depth` (default
    29: a plain stack of 30 layers or more). A depthwise convolution counts with the pointwise convolution that
    follows it, as one layer of a depthwise-separable pair; a module called again and again along the chain (a
    recurrent cell unrolled over time, a shared layer) counts once, since a recurrence is not a stack.

    The finding points at the stack: the container that holds most of its layers, at the line that builds it
    (`self.features = nn.Sequential(...)`), else its first layer. When the blocks on the chain do have
    shortcuts, but each is a projection (a 1x1 convolution) although the block's input already has its output's
    shape, it says so and points at the shortcut the block builds: the identity path is missing, not the skip.

    ## Why is this bad?
    He et al. showed that plain networks get *worse* as they get deeper, in training error, not only in test
    error: the "degradation problem". A 34-layer plain network trains worse than an 18-layer one, even with
    BatchNorm and careful initialization, because the product of many layer Jacobians is hard to optimize.
    Identity shortcuts give the signal and the gradient a path that skips the stack, which is what makes
    networks of 50 to 1000 layers trainable; a projection on every shortcut puts a weight layer on that path
    again. Up to about 20 layers (VGG-19) plain stacks train well, and with BatchNorm somewhat deeper ones do
    (Inception-v4's non-residual variant, VGG-BN).

    ## Example
    ```python
    layers = []
    for _ in range(30):
        layers += [nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()]
    self.body = nn.Sequential(*layers)
    ```

    ## Use instead
    ```python
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
            self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    self.body = nn.Sequential(*[Block() for _ in range(15)])
    ```

    ## Fix
    Group the stack into residual blocks (or make it shallower); give blocks whose input and output shapes
    match an identity shortcut. No automatic fix. Raise `max-plain-depth` / `max-normalized-depth` under
    `[tool.auditor.settings]` for a deliberate deep plain design.

    ## References
    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (section 4.1, plain-18 vs
    plain-34; section 3.3, identity vs projection shortcuts); Simonyan & Zisserman, "Very Deep Convolutional
    Networks for Large-Scale Image Recognition", ICLR 2015 (VGG, 11 to 19 layers); Szegedy et al.,
    "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning", AAAI 2017.
    """

    code = "RES003"
    name = "deep-plain-stack"
    severity = Severity.WARNING
    summary = "a long chain of weight layers with no skip connection"
    settings = {"max-plain-depth": 20, "max-normalized-depth": 29}

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        graph = ctx.graph
        limits = (int(ctx.setting("max-plain-depth")), int(ctx.setting("max-normalized-depth")))
        reused = _reused_modules(graph)
        chains: dict[int, _Chain | None] = {}  # node -> the deepest plain chain of weight layers reaching it
        deepest: dict[int, _Chain] = {}  # first layer of a chain -> its deepest chain over the limit
        for node in graph.nodes:
            sources = [(i, chains[id(i)]) for i in node.inputs if i.kind != PARAM and id(i) in chains]
            chain = _through(graph, node, sources)
            count = _layers(node)
            key = _module_key(node)
            if count and not (key in reused and chain is not None and key in chain.seen):
                chain = _Chain.extend(chain, node, count, bool(downstream(node).norms), key if key in reused else None)
                if chain.depth > limits[chain.normalized] and (
                    id(chain.start) not in deepest or deepest[id(chain.start)].depth <= chain.depth
                ):
                    deepest[id(chain.start)] = chain
            chains[id(node)] = chain
        for chain in deepest.values():
            yield self._finding(graph, chain, limits)

    def _finding(self, graph: AuditGraph, chain: _Chain, limits: tuple[int, int]) -> Finding:
        setting = "max-normalized-depth" if chain.normalized else "max-plain-depth"
        span = f"{chain.depth} weight layers from {chain.start.label()} to {chain.layer.label()} form one chain"
        limit = f"({setting} is {limits[chain.normalized]})"
        if chain.projections:
            blocks = ", ".join(f"`{m.module}`" if m.module else "the model" for m in chain.projections[:4])
            more = f" and {len(chain.projections) - 4} more" if len(chain.projections) > 4 else ""
            shortcut = _projection_layer(graph, chain.projections[0])
            return self.finding(
                f"{span} {limit}: the shortcuts of {len(chain.projections)} blocks on it ({blocks}{more}) are projections "
                "although their input and output shapes match, so no identity path skips the stack; use an identity "
                "shortcut where the shapes match and a projection only where they change",
                at=shortcut or chain.start,
            )
        message = f"{span} with no skip connection {limit}: deep plain stacks are hard to optimize; group them into residual blocks"
        container = _container(chain.layers(), graph.sites)
        if container is None:
            return self.finding(message, at=chain.start)
        file, line = graph.sites[container]
        return self.finding(message, at=chain.start, module=container, file=file, line=line)


@dataclass(frozen=True)
class _Chain:
    """A chain of weight layers, last layer first (linked through `previous`)."""

    depth: int
    layer: Node
    start: Node
    previous: _Chain | None
    normalized_layers: int  # layers followed by a norm before the next weight layer
    projections: tuple[Node, ...] = ()  # adds on the chain whose shortcut is a needless projection
    seen: frozenset[object] = frozenset()  # reused modules (recurrent cells) already counted on this chain

    @property
    def normalized(self) -> bool:
        """Most of its layers are normalized (BatchNorm etc.): such chains train well deeper (Inception, VGG-BN)."""
        return 2 * self.normalized_layers >= self.depth

    @staticmethod
    def extend(chain: _Chain | None, node: Node, count: int, normalized: bool, reused: object | None) -> _Chain:
        if chain is None:
            return _Chain(count, node, node, None, count if normalized else 0, (), frozenset({reused} - {None}))
        return _Chain(
            chain.depth + count, node, chain.start, chain, chain.normalized_layers + (count if normalized else 0),
            chain.projections, chain.seen | ({reused} - {None}),
        )

    def with_projection(self, merge: Node) -> _Chain:
        return replace(self, projections=self.projections + (merge,))

    def layers(self) -> list[Node]:
        found, chain = [], self
        while chain is not None:
            found.append(chain.layer)
            chain = chain.previous
        return found[::-1]


def _through(graph: AuditGraph, node: Node, sources: list[tuple[Node, _Chain | None]]) -> _Chain | None:
    """The chain a node passes on: the deepest of its inputs', or at a skip the shortest (the shortcut that
    signal and gradient take: a residual add, a concatenation, a gate multiplying its input as in
    squeeze-and-excitation)."""
    if not sources:
        return None
    if (node.op in SKIP_MERGES or node.op in PRODUCTS) and merges_two_values(node):
        operand, chain = min(sources, key=_depth)
        if chain is not None and node.op in (ops.ADD, ops.SUB) and _needless_projection(graph, node, operand):
            return chain.with_projection(node)
        return chain
    return max(sources, key=_depth)[1]


def _depth(source: tuple[Node, _Chain | None]) -> int:
    return source[1].depth if source[1] is not None else 0


def _needless_projection(graph: AuditGraph, merge: Node, shortcut: Node) -> bool:
    """Whether `shortcut`, the operand a residual add takes its short path from, passes through a weight layer
    from the block's input although that input already has the add's shape (an identity would fit)."""
    node, weighted = shortcut, False
    for _ in range(8):  # a projection shortcut is a few ops: conv, norm, maybe a pool
        if len(node.users) > 1:  # the fork: the block's input, which the other operand reads too
            others = [o for o in merge.tensor_inputs if o is not shortcut]
            return weighted and node.shape == merge.shape and any(graph.depends_on(o, node) for o in others)
        if len(node.tensor_inputs) != 1:
            return False
        weighted = weighted or node.op in DENSE
        node = node.tensor_inputs[0]
    return False


def _projection_layer(graph: AuditGraph, merge: Node) -> Node | None:
    """The weight layer of a needless projection shortcut: where its block builds it."""
    for node in graph.predecessors(merge, through=ops.TRANSPARENT | ops.NORMS | {ops.POOL}):
        if node.op in DENSE and len(node.tensor_inputs) == 1 and len(node.tensor_inputs[0].users) > 1:
            return node
    return None


def _container(layers: list[Node], sites: dict[str, tuple[str, int]]) -> str | None:
    """The submodule that holds most of a chain's layers (`features` of `self.features = nn.Sequential(...)`),
    when it holds at least half of them and its creation line is known."""
    counts: Counter[str] = Counter()
    for layer in layers:
        parts = (layer.module or "").split(".")
        counts.update(".".join(parts[:end]) for end in range(1, len(parts)))
    if not counts:
        return None
    best = max(counts, key=lambda name: (counts[name], name.count(".")))
    return best if 2 * counts[best] >= len(layers) and best in sites else None


def _reused_modules(graph: AuditGraph) -> set[object]:
    """Weight modules called more than once (recurrent cells unrolled over time, shared layers)."""
    calls = Counter(_module_key(n) for n in graph.nodes if _layers(n) and n.is_module)
    return {key for key, count in calls.items() if count > 1}


def _module_key(node: Node) -> object:
    return id(node.obj) if node.obj is not None else (node.module, node.module_type)


def _layers(node: Node) -> int:
    """How many weight layers a node counts for in a chain."""
    if node.op in DENSE or node.op == ops.BILINEAR:
        return 0 if is_depthwise(node) else 1
    if applies_weight(node):  # `x @ self.w`, a weight applied by a function call
        return 1
    if node.op == ops.RNN:
        layers = node.attrs.get("num_layers", 1)
        return layers if isinstance(layers, int) and layers > 0 else 1
    return 0
