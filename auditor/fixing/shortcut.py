"""Residual shortcuts (He et al. 2016): adapt the identity branch of an add to the block output's shape.

Option B (default): a 1x1 convolution with the block's stride plus BatchNorm. Option A (`--shortcut pad`):
parameter-free, subsample with the stride and append zero channels; only when channels do not shrink.
Linear features (the last dim differs, everything before it matches): a Linear projection, or zero-padding of
the features with `--shortcut pad` when they grow.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch.nn as nn
import torch.nn.functional as F

from auditor.fixing.rewrite import CannotFix
from auditor.graph import Node, ops

if TYPE_CHECKING:
    from auditor.fixing.context import FixContext

_CONV = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d), 3: (nn.Conv3d, nn.BatchNorm3d)}
_WEIGHTED = (ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR)


def insert_shortcut(ctx: FixContext, merge: Node, identity: Node, branch: Node) -> str:
    """Put a shortcut between `identity` and the add/sub `merge`; returns the action text (before => after)."""
    i_shape, b_shape = identity.shape, branch.shape
    if i_shape is None or b_shape is None:
        raise CannotFix("the operands' shapes are unknown")
    if len(i_shape) != len(b_shape) or len(i_shape) < 2:
        raise CannotFix(f"the operands have different ranks ({_shape(i_shape)} and {_shape(b_shape)}): make both the same shape by hand")
    if i_shape[0] != b_shape[0]:
        raise CannotFix(f"the batch sizes differ ({i_shape[0]} and {b_shape[0]})")
    block = merge.module or ""
    before = f"identity {_shape(i_shape)} + branch {_shape(b_shape)} fails"
    if _features_last(ctx, branch, identity, i_shape, b_shape):
        return f"{before} => {_linear(ctx, merge, identity, block, i_shape[-1], b_shape[-1])}"
    spatial = len(i_shape) - 2
    if spatial not in _CONV:
        raise CannotFix(f"no shortcut for {len(i_shape)}-d values of these shapes")
    stride = _stride(i_shape[2:], b_shape[2:])
    if stride is None:
        raise CannotFix(f"the spatial sizes {_shape(i_shape[2:])} and {_shape(b_shape[2:])} cannot be matched by a strided 1x1 shortcut")
    c_in, c_out = i_shape[1], b_shape[1]
    if ctx.shortcut == "pad":
        if c_out >= c_in:
            return f"{before} => {_pad(ctx, merge, identity, spatial, stride, c_out - c_in)}"
        note = f" (--shortcut pad needs channels to grow, {c_in} -> {c_out} shrinks: used a 1x1 conv)"
    else:
        note = ""
    return f"{before} => {_conv(ctx, merge, identity, block, spatial, stride, c_in, c_out)}{note}"


def _conv(ctx: FixContext, merge: Node, identity: Node, block: str, spatial: int, stride: int, c_in: int, c_out: int) -> str:
    conv_cls, bn_cls = _CONV[spatial]
    conv = conv_cls(c_in, c_out, kernel_size=1, stride=stride, bias=False)
    bn = bn_cls(c_out)
    name = _free_name(ctx, block)
    ctx.reinit_with_module(conv, "weight", lambda t, g: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=g), key=name)
    name = ctx.add_module(name, nn.Sequential(conv, bn))
    projected = ctx.insert_before(merge, "call_module", f"{name}.0", (identity,))
    normed = ctx.insert_before(merge, "call_module", f"{name}.1", (projected,))
    ctx.replace_input(merge, identity, normed)
    stride_text = f", stride={stride}" if stride != 1 else ""
    return (f"shortcut `{name}` = {conv_cls.__name__}({c_in}, {c_out}, kernel_size=1{stride_text}, bias=False) + "
            f"{bn_cls.__name__}({c_out}) on the identity (new parameters)")


def _pad(ctx: FixContext, merge: Node, identity: Node, spatial: int, stride: int, extra: int) -> str:
    value = identity
    steps = []
    if stride != 1:
        index = (slice(None), slice(None)) + (slice(None, None, stride),) * spatial
        value = ctx.insert_before(merge, "call_function", operator.getitem, (value, index))
        steps.append(f"subsample by {stride}")
    if extra:
        value = ctx.insert_before(merge, "call_function", F.pad, (value, (0, 0) * spatial + (0, extra)))
        steps.append(f"append {extra} zero channels")
    ctx.replace_input(merge, identity, value)
    return f"zero-pad shortcut on the identity: {', '.join(steps)} (no parameters)"


def _linear(ctx: FixContext, merge: Node, identity: Node, block: str, f_in: int, f_out: int) -> str:
    if ctx.shortcut == "pad" and f_out > f_in:
        padded = ctx.insert_before(merge, "call_function", F.pad, (identity, (0, f_out - f_in)))
        ctx.replace_input(merge, identity, padded)
        return f"zero-pad shortcut on the identity: append {f_out - f_in} zero features (no parameters)"
    projection = nn.Linear(f_in, f_out, bias=False)
    name = _free_name(ctx, block)
    ctx.reinit_with_module(projection, "weight", lambda t, g: nn.init.xavier_normal_(t, generator=g), key=name)
    name = ctx.add_module(name, projection)
    projected = ctx.insert_before(merge, "call_module", name, (identity,))
    ctx.replace_input(merge, identity, projected)
    note = "" if ctx.shortcut != "pad" else f" (--shortcut pad needs features to grow, {f_in} -> {f_out} shrinks)"
    return f"shortcut `{name}` = Linear({f_in}, {f_out}, bias=False) on the identity (new parameters){note}"


def _features_last(ctx: FixContext, branch: Node, identity: Node, i_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> bool:
    """Whether the operands differ in a trailing feature dim (Linear) rather than channels/space (conv)."""
    layer = _branch_layer(ctx, branch, identity)
    if layer is not None:
        return layer.op == ops.LINEAR
    return len(i_shape) == 2 or (i_shape[:-1] == b_shape[:-1])


def _branch_layer(ctx: FixContext, branch: Node, identity: Node) -> Node | None:
    """The weight layer nearest the end of the branch (not on the identity's side)."""
    stack, seen = [branch], set()
    while stack:
        node = stack.pop(0)
        if id(node) in seen or node is identity:
            continue
        seen.add(id(node))
        if node.op in _WEIGHTED:
            return node
        stack.extend(node.tensor_inputs)
    return None


def _stride(identity: tuple[int, ...], branch: tuple[int, ...]) -> int | None:
    """The smallest stride s with ceil(identity / s) == branch in every spatial dim (a 1x1 conv's output)."""
    if not identity:
        return 1
    for s in range(1, max(identity) + 1):
        if all(-(-i // s) == b for i, b in zip(identity, branch)):
            return s
    return None


def _free_name(ctx: FixContext, block: str) -> str:
    return f"{block}.shortcut" if block else "shortcut"


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"

