from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.graph import Node, ops
from auditor.rule import GraphContext, Rule, register

from auditor_rules._shared import shape_text

# Producers whose output has its channels on dim 1 (NCHW / NCL feature maps).
_CHANNELS_FIRST = frozenset({ops.CONV, ops.CONV_TRANSPOSE, ops.BATCH_NORM, ops.INSTANCE_NORM, ops.GROUP_NORM})
# Producers whose output has its features last ([B, T, D] token features); a Linear's, when it maps features.
_FEATURES_LAST = frozenset({ops.EMBEDDING, ops.ATTENTION, ops.RNN})
# Reshapes that reorder dims (by the target's name: `Tensor.transpose`, `aten.permute`, ...).
_PERMUTES = ("transpose", "permute", "movedim", "swapaxes", "swapdims", ".t")
# Ops that keep the layout of their (first same-shaped) input.
_KEEP_LAYOUT = ops.ACTIVATIONS | {
    ops.DROPOUT, ops.IDENTITY, ops.POOL, ops.PAD, ops.UPSAMPLE, ops.ADD, ops.SUB, ops.MUL, ops.DIV,
    ops.LAYER_NORM, ops.RMS_NORM, "contiguous", "clone", "to", "type_as", "detach",
}


@register
class LayerNormWrongAxis(Rule):
    """
    ## What it does
    Flags a LayerNorm applied to channels-first feature maps ([N, C, H, W] or [N, C, L], straight from a
    convolution or a BatchNorm/GroupNorm, with no permute in between) whose `normalized_shape` covers only
    trailing spatial dims and not the channels: `nn.LayerNorm(C)` on NCHW maps whose width happens to equal C,
    or `nn.LayerNorm(L)` over the length of a Conv1d output. Also a LayerNorm applied to per-position features
    ([B, T, D] of a Linear, an Embedding, attention or a recurrent layer) after a transpose moved D off the last
    dim: `nn.LayerNorm(T)` on `x.transpose(1, 2)` normalizes each feature over the positions.

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
            layout = _layout(data)
            if layout is None or layout.dim >= len(shape) - len(normalized):
                continue  # unknown, or the normalized dims include the features
            dims = shape_text(shape[-len(normalized):])
            if layout.moved_by is not None:
                yield self.finding(
                    f"{norm.label()} normalizes the last dims {dims} of {shape_text(shape)}, which {layout.moved_by.label()} "
                    f"made from the features of {layout.source.label()} {shape_text(layout.source.shape)}: that is the "
                    f"sequence (or space), not the {shape[layout.dim]} features; apply the LayerNorm before the transpose",
                    at=norm,
                )
                continue
            names = {(4, 1): "width", (3, 1): "length", (5, 1): "last spatial dim"}
            what = names.get((len(shape), len(normalized)), "spatial dims")
            coincidence = ""
            if shape[-1] == shape[1] and len(normalized) == 1:
                coincidence = " (it runs only because the sizes happen to match)"
            yield self.finding(
                f"{norm.label()} normalizes the last dims {dims} of channels-first maps {shape_text(shape)} from "
                f"{layout.source.label()}: that is the {what}, not the {shape[1]} channels{coincidence}; permute to "
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


@dataclass
class _Layout:
    """Where a tensor's features are: dim `dim`, made by `source`, and moved there by the permute `moved_by`
    (None when the source's own layout is kept)."""

    dim: int
    source: Node
    moved_by: Node | None = None


def _layout(node: Node, depth: int = 0) -> _Layout | None:
    """The feature dim of `node`'s value, traced back to the layer that made the features: dim 1 of a conv or
    BatchNorm/GroupNorm output, the last dim of an Embedding, attention or recurrent output, and of a Linear
    applied along the features. Ops that keep the layout (activations, norms, residual adds) are looked
    through, and reshapes follow `_reshaped`; None when not known."""
    while depth < 64:
        depth += 1
        rank = len(node.shape or ())
        if node.op in _CHANNELS_FIRST:
            return _Layout(1, node)
        if node.op in _FEATURES_LAST:
            return _Layout(rank - 1, node)
        if node.op == ops.LINEAR:
            inner = _layout(node.tensor_inputs[0], depth) if node.tensor_inputs else None
            mixes_positions = inner is not None and inner.dim != rank - 1  # token mixing: features stay put
            return inner if mixes_positions else _Layout(rank - 1, node)
        if node.op == ops.RESHAPE and node.tensor_inputs:
            return _reshaped(node, _layout(node.tensor_inputs[0], depth))
        if node.op not in _KEEP_LAYOUT:
            return None
        same = [i for i in node.tensor_inputs if i.shape == node.shape]
        if not same:
            return None
        node = same[0]
    return None


def _reshaped(node: Node, inner: _Layout | None) -> _Layout | None:
    """Where a reshape put the feature dim of its input: a permute (`transpose`, `permute`) moves it where the
    sizes say unambiguously; a view or flatten keeps it when every dim up to it (or from it to the end) is kept."""
    before, after = node.tensor_inputs[0].shape, node.shape
    if inner is None or not before or not after:
        return None
    dim = inner.dim
    if any(word in node.target for word in _PERMUTES):
        places = [i for i, s in enumerate(after) if s == before[dim]]
        if len(places) != 1 or len(before) != len(after):
            return None  # equal sizes: where the features went is not known
        return inner if places[0] == dim else _Layout(places[0], inner.source, node)
    if before[: dim + 1] == after[: dim + 1]:
        return inner
    tail = len(before) - dim
    if len(after) >= tail and before[dim:] == after[len(after) - tail:]:
        return _Layout(len(after) - tail, inner.source, inner.moved_by)
    return None
