"""Skip concatenations (U-Net): make the operands of a `torch.cat` the same size outside the concatenated dim.

`pad` (default): zero-pad each smaller operand to the largest size, the odd pixel on the far side
(`F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])`, as milesial/Pytorch-UNet's `Up` does). `crop`
(`--skip-concat crop`): center-crop each larger operand to the smallest size, the original U-Net's "copy and
crop". `plan` reads only shapes (the audit calls it to tell whether RES004 is fixable).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn.functional as F

from auditor.fixing.rewrite import CannotFix
from auditor.graph import Node

MODES = ("pad", "crop")


@dataclass(frozen=True)
class Alignment:
    """How each operand of a concatenation changes: `steps[i]` is (function, extra arguments) for operand i,
    or None when it already has the target size."""

    mode: str
    dim: int  # the concatenated dim
    shapes: tuple[tuple[int, ...], ...]
    target: tuple[int, ...]  # the size every operand gets in the other dims (its own along `dim`)
    steps: tuple[tuple[Callable[..., Any], tuple[Any, ...]] | None, ...]

    @property
    def output(self) -> tuple[int, ...]:
        """The concatenation's shape once aligned."""
        size = sum(s[self.dim] for s in self.shapes)
        return tuple(size if d == self.dim else t for d, t in enumerate(self.target))

    def describe(self, labels: list[str]) -> str:
        spatial = [d for d in range(len(self.target)) if d != self.dim and any(s[d] != self.target[d] for s in self.shapes)]
        size = "x".join(str(self.target[d]) for d in spatial)
        before = " and ".join(f"{label} {_shape(s)}" for label, s in zip(labels, self.shapes))
        verb = "zero-padded" if self.mode == "pad" else "center-cropped"
        changed = ", ".join(label for label, step in zip(labels, self.steps) if step is not None)
        return f"cat of {before} fails => {changed} {verb} to {size} before the cat (no parameters)"


def plan(cat: Node, operands: list[Node], mode: str) -> Alignment:
    """The alignment that lets `cat` concatenate `operands` (`mode`: "pad" or "crop")."""
    shapes = [o.shape for o in operands]
    if any(s is None for s in shapes) or len(operands) < 2:
        raise CannotFix("the operands' shapes are unknown")
    known = [tuple(s) for s in shapes if s is not None]
    rank = len(known[0])
    if any(len(s) != rank for s in known) or rank < 3:
        raise CannotFix("the operands are not images or sequences of the same rank: make them the same size by hand")
    raw = cat.attrs.get("dim", cat.attrs.get("axis", 0))
    dim = raw % rank if isinstance(raw, int) else 0
    differ = [d for d in range(rank) if d != dim and len({s[d] for s in known}) > 1]
    if any(d < 2 for d in differ):
        raise CannotFix(f"the operands differ in dim {min(differ)} (batch or channels), not in their spatial size: "
                        "this is not a skip mismatch padding or cropping can fix")
    pick = max if mode == "pad" else min
    target = tuple(pick(s[d] for s in known) if d in differ else known[0][d] for d in range(rank))
    steps = tuple(_step(s, target, differ, mode) for s in known)
    return Alignment(mode, dim, tuple(known), target, steps)


def _step(shape: tuple[int, ...], target: tuple[int, ...], differ: list[int], mode: str) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
    if all(shape[d] == target[d] for d in differ):
        return None
    if mode == "pad":
        first = min(differ)
        amounts: list[int] = []
        for d in range(len(shape) - 1, first - 1, -1):  # F.pad lists the last dim first
            extra = target[d] - shape[d]
            amounts += [extra // 2, extra - extra // 2]
        return F.pad, (amounts,)
    index = tuple(slice((shape[d] - target[d]) // 2, (shape[d] - target[d]) // 2 + target[d]) if d in differ else slice(None)
                  for d in range(len(shape)))
    return operator.getitem, (index,)


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
