"""Residual shortcuts (He et al. 2016): adapt the identity branch of an add to the block output's shape.

Option B (default): a 1x1 convolution with the block's stride plus BatchNorm. Option A (`--shortcut pad`):
parameter-free, subsample with the stride and append zero channels; only when channels do not shrink.
Linear features (the last dim differs, everything before it matches): a Linear projection, or zero-padding of
the features with `--shortcut pad` when they grow.

`plan` reads only shapes and the graph (the audit calls it to tell whether RES001 is fixable); `Shortcut` then
says which modules or functions the fix inserts.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from auditor.fixing.rewrite import CannotFix
from auditor.graph import Node, ops

_CONV = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d), 3: (nn.Conv3d, nn.BatchNorm3d)}
_WEIGHTED = (ops.CONV, ops.CONV_TRANSPOSE, ops.LINEAR)
Fill = Callable[[torch.Tensor, str, Callable[[torch.Tensor, torch.Generator], Any]], None]


@dataclass(frozen=True)
class Shortcut:
    """What goes on the identity branch: `kind` is "conv" (1x1 conv + BN), "pad" (subsample, zero channels),
    "linear" (a projection) or "pad-features" (zero features)."""

    kind: str
    identity: tuple[int, ...]
    branch: tuple[int, ...]
    stride: int = 1
    note: str = ""

    @property
    def spatial(self) -> int:
        return len(self.identity) - 2

    @property
    def has_parameters(self) -> bool:
        return self.kind in ("conv", "linear")

    def build(self, fill: Fill, name: str) -> nn.Module:
        """The new module (conv + BN as an nn.Sequential, or a Linear), its weight drawn by `fill`."""
        if self.kind == "linear":
            projection = nn.Linear(self.identity[-1], self.branch[-1], bias=False)
            fill(projection.weight, f"{name}.weight", lambda t, g: nn.init.xavier_normal_(t, generator=g))
            return projection
        conv_cls, bn_cls = _CONV[self.spatial]
        conv = conv_cls(self.identity[1], self.branch[1], kernel_size=1, stride=self.stride, bias=False)
        fill(conv.weight, f"{name}.weight", lambda t, g: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=g))
        return nn.Sequential(conv, bn_cls(self.branch[1]))

    def calls(self, name: str) -> list[str]:
        """The submodules to call in turn on the identity (after `build` is registered as `name`)."""
        return [name] if self.kind == "linear" else [f"{name}.0", f"{name}.1"]

    def functions(self) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
        """Parameter-free shortcuts: the functions to apply in turn, with their extra arguments."""
        if self.kind == "pad-features":
            return [(F.pad, ((0, self.branch[-1] - self.identity[-1]),))]
        steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        if self.stride != 1:
            steps.append((operator.getitem, ((slice(None), slice(None)) + (slice(None, None, self.stride),) * self.spatial,)))
        extra = self.branch[1] - self.identity[1]
        if extra:
            steps.append((F.pad, ((0, 0) * self.spatial + (0, extra),)))
        return steps

    def describe(self, name: str) -> str:
        before = f"identity {_shape(self.identity)} + branch {_shape(self.branch)} fails"
        if self.kind == "linear":
            after = f"shortcut `{name}` = Linear({self.identity[-1]}, {self.branch[-1]}, bias=False) on the identity (new parameters)"
        elif self.kind == "pad-features":
            after = f"zero-pad shortcut on the identity: append {self.branch[-1] - self.identity[-1]} zero features (no parameters)"
        elif self.kind == "conv":
            conv_cls, bn_cls = _CONV[self.spatial]
            stride = f", stride={self.stride}" if self.stride != 1 else ""
            after = (f"shortcut `{name}` = {conv_cls.__name__}({self.identity[1]}, {self.branch[1]}, kernel_size=1{stride}, "
                     f"bias=False) + {bn_cls.__name__}({self.branch[1]}) on the identity (new parameters)")
        else:
            steps = ([f"subsample by {self.stride}"] if self.stride != 1 else [])
            extra = self.branch[1] - self.identity[1]
            steps += [f"append {extra} zero channels"] if extra else []
            after = f"zero-pad shortcut on the identity: {', '.join(steps)} (no parameters)"
        return f"{before} => {after}{self.note}"


def plan(identity: Node, branch: Node, option: str) -> Shortcut:
    """The shortcut that makes `identity` the shape of `branch` (`option`: "conv" or "pad")."""
    i_shape, b_shape = identity.shape, branch.shape
    if i_shape is None or b_shape is None:
        raise CannotFix("the operands' shapes are unknown")
    if len(i_shape) != len(b_shape) or len(i_shape) < 2:
        raise CannotFix(f"the operands have different ranks ({_shape(i_shape)} and {_shape(b_shape)}): make both the same shape by hand")
    if i_shape[0] != b_shape[0]:
        raise CannotFix(f"the batch sizes differ ({i_shape[0]} and {b_shape[0]})")
    if _features_last(branch, identity, i_shape, b_shape):
        f_in, f_out = i_shape[-1], b_shape[-1]
        if option == "pad" and f_out > f_in:
            return Shortcut("pad-features", i_shape, b_shape)
        note = f" (--shortcut pad needs features to grow, {f_in} -> {f_out} shrinks)" if option == "pad" else ""
        return Shortcut("linear", i_shape, b_shape, note=note)
    if len(i_shape) - 2 not in _CONV:
        raise CannotFix(f"no shortcut for {len(i_shape)}-d values of these shapes")
    stride = _stride(i_shape[2:], b_shape[2:])
    if stride is None:
        raise CannotFix(f"the spatial sizes {_shape(i_shape[2:])} and {_shape(b_shape[2:])} cannot be matched by a strided 1x1 shortcut")
    c_in, c_out = i_shape[1], b_shape[1]
    if option == "pad":
        if c_out >= c_in:
            return Shortcut("pad", i_shape, b_shape, stride)
        return Shortcut("conv", i_shape, b_shape, stride, f" (--shortcut pad needs channels to grow, {c_in} -> {c_out} shrinks: used a 1x1 conv)")
    return Shortcut("conv", i_shape, b_shape, stride)


def _features_last(branch: Node, identity: Node, i_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> bool:
    """Whether the operands differ in a trailing feature dim (Linear) rather than channels/space (conv)."""
    layer = _branch_layer(branch, identity)
    if layer is not None:
        return layer.op == ops.LINEAR
    return len(i_shape) == 2 or (i_shape[:-1] == b_shape[:-1])


def _branch_layer(branch: Node, identity: Node) -> Node | None:
    """The weight layer nearest the end of the branch (not on the identity's side)."""
    queue, seen = [branch], set()
    while queue:
        node = queue.pop(0)
        if id(node) in seen or node is identity:
            continue
        seen.add(id(node))
        if node.op in _WEIGHTED:
            return node
        queue.extend(node.tensor_inputs)
    return None


def _stride(identity: tuple[int, ...], branch: tuple[int, ...]) -> int | None:
    """The smallest stride s with ceil(identity / s) == branch in every spatial dim (a 1x1 conv's output)."""
    if not identity:
        return 1
    for s in range(1, max(identity) + 1):
        if all(-(-i // s) == b for i, b in zip(identity, branch)):
            return s
    return None


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
