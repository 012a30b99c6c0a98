from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import shape_text

# Producers whose output has its channels on dim 1 (NCHW / NCL feature maps).
_CHANNELS_FIRST = frozenset({ops.CONV, ops.CONV_TRANSPOSE, ops.BATCH_NORM, ops.INSTANCE_NORM, ops.GROUP_NORM})
# Ops that keep the layout of their (first same-shaped) input.
_KEEP_LAYOUT = ops.ACTIVATIONS | {
    ops.DROPOUT, ops.IDENTITY, ops.POOL, ops.PAD, ops.UPSAMPLE, ops.ADD, ops.SUB, ops.MUL, ops.DIV,
    "contiguous", "clone", "to", "type_as", "detach",
}


@register
class LayerNormWrongAxis(Rule):
    """
    ## What it does
    Flags a LayerNorm applied to channels-first feature maps ([N, C, H, W] or [N, C, L], straight from a
    convolution or a BatchNorm/GroupNorm, with no permute in between) whose `normalized_shape` covers only
    trailing spatial dims and not the channels: `nn.LayerNorm(C)` on NCHW maps whose width happens to equal C,
    or `nn.LayerNorm(L)` over the length of a Conv1d output.

    ## Why is this bad?
    LayerNorm normalizes over the *last* `len(normalized_shape)` dims. Its purpose is to normalize each
    position over its features; on channels-first maps the last dim is the width (or the sequence length),
    so the layer normalizes every row of pixels (every channel's time series) on its own and mixes nothing
    across channels. It runs without error whenever the sizes happen to match, which makes the mistake silent.

    ## Example
    ```python
    x = self.conv(x)           # [N, 64, 64, 64]
    x = self.norm(x)           # self.norm = nn.LayerNorm(64): normalizes over the width
    ```

    ## Use instead
    ```python
    x = self.conv(x)
    x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)   # LayerNorm(64) over the channels
    # or: nn.GroupNorm(1, 64) to normalize over channels and space together
    ```

    ## Fix
    Permute to channels-last around the LayerNorm (as ConvNeXt does), or use `nn.GroupNorm(1, C)` when
    normalizing over [C, H, W] together is intended. No automatic fix.

    ## References
    Ba, Kiros, Hinton, "Layer Normalization", 2016; Liu et al., "A ConvNet for the 2020s" (ConvNeXt), CVPR 2022
    (channels-last LayerNorm on feature maps).
    """

    code = "NRM004"
    name = "layernorm-wrong-axis"
    severity = Severity.WARNING
    summary = "LayerNorm whose normalized_shape does not cover the feature (last) dims it is applied to"

    def check(self, ctx: GraphContext) -> Iterator[Finding]:
        for norm in ctx.graph.find(ops.LAYER_NORM):
            if not norm.tensor_inputs:
                continue
            data = norm.tensor_inputs[0]
            shape = data.shape
            normalized = _normalized_shape(norm)
            if shape is None or normalized is None or len(shape) < 3:
                continue
            if len(normalized) >= len(shape) - 1:
                continue  # covers the channels (dim 1) too: normalizes each sample over [C, ...] together
            producer = _channels_first_producer(data)
            if producer is None:
                continue
            dims = shape_text(shape[-len(normalized):])
            names = {(4, 1): "width", (3, 1): "length", (5, 1): "last spatial dim"}
            what = names.get((len(shape), len(normalized)), "spatial dims")
            coincidence = ""
            if shape[-1] == shape[1] and len(normalized) == 1:
                coincidence = " (it runs only because the sizes happen to match)"
            yield self.finding(
                f"{norm.label()} normalizes the last dims {dims} of channels-first maps {shape_text(shape)} from "
                f"{producer.label()}: that is the {what}, not the {shape[1]} channels{coincidence}; permute to "
                "channels-last around it, or use GroupNorm(1, C)",
                at=norm,
            )


def _normalized_shape(norm: Node) -> tuple[int, ...] | None:
    value = norm.attrs.get("normalized_shape")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _channels_first_producer(node: Node) -> Node | None:
    """The conv/BatchNorm/GroupNorm whose channels-first layout `node` still has, or None when unknown (a
    permute, a reshape or anything else that may have moved the channels)."""
    for _ in range(64):
        if node.op in _CHANNELS_FIRST:
            return node
        if node.op not in _KEEP_LAYOUT:
            return None
        same = [i for i in node.tensor_inputs if i.shape == node.shape]
        if not same:
            return None
        node = same[0]
    return None
