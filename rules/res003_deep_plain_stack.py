from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import PARAM, Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import DENSE, PRODUCTS, SKIP_MERGES, is_depthwise, merges_two_values


@register
class DeepPlainStack(Rule):
    """
    ## What it does
    Measures, for every weight layer, the length of the shortest chain of weight layers (convolutions,
    linear layers, bilinear layers, recurrent layers) that leads to it from the input, where a skip connection
    (a residual add or a concatenation, as in ResNet, DenseNet or U-Net, or a gate multiplying its input, as in
    squeeze-and-excitation) counts as a shortcut, and flags a
    chain longer than the `max-plain-depth` setting (default 20) with its depth. A depthwise convolution
    counts with the pointwise convolution that follows it, as one layer of a depthwise-separable pair.

    ## Why is this bad?
    He et al. showed that plain networks get *worse* as they get deeper, in training error, not only in test
    error: the "degradation problem". A 34-layer plain network trains worse than an 18-layer one, even with
    BatchNorm and careful initialization, because the product of many layer Jacobians is hard to optimize.
    Identity shortcuts give the signal and the gradient a path that skips the stack, which is what makes
    networks of 50 to 1000 layers trainable. Up to about 20 layers (VGG-19) plain stacks train well.

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
    Group the stack into residual blocks (or make it shallower). No automatic fix. Raise
    `max-plain-depth` under `[tool.auditor.settings]` for a deliberate deep plain design.

    ## References
    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (section 4.1, plain-18 vs
    plain-34); Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
    ICLR 2015 (VGG, 11 to 19 layers).
    """

    code = "RES003"
    name = "deep-plain-stack"
    severity = Severity.WARNING
    summary = "a long chain of weight layers with no skip connection"
    settings = {"max-plain-depth": 20}

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        limit = int(ctx.setting("max-plain-depth"))
        depth: dict[int, tuple[int, Node | None]] = {}  # node -> (weight layers on its shortest path, first of them)
        deepest: dict[int, tuple[int, Node, Node]] = {}  # chain start -> (depth, start, end)
        for node in ctx.graph.nodes:
            sources = [depth[id(i)] for i in node.inputs if i.kind != PARAM and id(i) in depth]
            if not sources:
                here: tuple[int, Node | None] = (0, None)
            elif (node.op in SKIP_MERGES or node.op in PRODUCTS) and merges_two_values(node):
                # The shortcut: signal and gradient take the shorter path (a residual add, a concatenation,
                # or a gate multiplying the input, as in squeeze-and-excitation).
                here = min(sources, key=lambda s: s[0])
            else:
                here = max(sources, key=lambda s: s[0])
            count = _layers(node)
            if count:
                start = here[1] if here[1] is not None else node
                here = (here[0] + count, start)
                if here[0] > limit and (id(start) not in deepest or deepest[id(start)][0] < here[0]):
                    deepest[id(start)] = (here[0], start, node)
            depth[id(node)] = here
        for total, start, end in deepest.values():
            yield self.finding(
                f"{total} weight layers from {start.label()} to {end.label()} form one chain with no skip connection "
                f"(max-plain-depth is {limit}): deep plain stacks are hard to optimize; "
                "group them into residual blocks",
                at=end,
            )


def _layers(node: Node) -> int:
    """How many weight layers a node counts for in a chain."""
    if node.op in DENSE or node.op == ops.BILINEAR:
        return 0 if is_depthwise(node) else 1
    if node.op == ops.RNN:
        layers = node.attrs.get("num_layers", 1)
        return layers if isinstance(layers, int) and layers > 0 else 1
    return 0
