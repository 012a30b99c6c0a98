"""Failures met while running the model, shared by the captures that run it (fx's Interpreter, hooks)."""

from __future__ import annotations

import torch

from auditor.errors import first_line
from auditor.graph import ops

# Elementwise ops between two tensors whose shape failure is a finding (RES001), not a broken target.
_RECOVERABLE = frozenset({ops.ADD, ops.SUB, ops.MUL, ops.DIV})


def is_recoverable(op_name: str) -> bool:
    """Whether a failing call of this function/method name is recorded and stepped over."""
    return ops.op_for_name(op_name)[0] in _RECOVERABLE


def mismatch_message(left: torch.Tensor, right: torch.Tensor) -> str:
    return f"operands of shapes {_shape(left)} and {_shape(right)} cannot be combined"


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


class ForwardFailure(Exception):
    """The model's forward raised at a node that no rule explains; says where, for the one-line error."""

    def __init__(self, node: str, target: str, owner: str | None, site: tuple[str, int] | None, cause: BaseException) -> None:
        self.node, self.target, self.owner, self.site, self.cause = node, target, owner, site, cause
        where = f"{site[0]}:{site[1]}" if site else "?"
        owner_text = f" in `{owner}`" if owner else ""
        super().__init__(f"`{target}`{owner_text} ({where}): {first_line(cause)}")
