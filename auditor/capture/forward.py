"""Running the model inside a capture (fx's Interpreter, the hooks pass, torch.export's trace): failing merges
are stepped over, and a forward pass that still fails further on leaves a partial graph.

A merge of two computed tensors that fails on their shapes (a residual add of a 64- and a 256-channel tensor, an
in-place `out += x` whose `out` is narrower than the broadcast sum, a skip concatenation whose spatial sizes
differ) is a finding (RES001, RES004), not a broken target. The capture
records the failure on that op and carries on with a stand-in value: for an add, the operand on the longer path
(a block's branch rather than its identity input: the shape the block was meant to produce); for a
concatenation, every operand padded or center-cropped to the skip's size, as U-Net implementations do. When the
rest of the forward then fails, the capture runs again with the next choice (`Recovery`); when no choice lets it
finish, the graph up to where it stopped is audited (`Attempt`, `mark_partial`). The stand-ins are plain torch
ops on the operands, so this works on real, fake and meta tensors alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

import torch
import torch.nn.functional as F

from auditor.capture.common import iter_tensors
from auditor.errors import first_line
from auditor.graph import AuditGraph, ops

# Elementwise ops between two tensors whose shape failure is a finding (RES001), not a broken target.
_ELEMENTWISE = frozenset({ops.ADD, ops.SUB, ops.MUL, ops.DIV})
# The out-of-place op whose result stands in for an in-place one that cannot hold it (`out += x`, `out` narrower).
_OUT_OF_PLACE = {ops.ADD: torch.add, ops.SUB: torch.sub, ops.MUL: torch.mul, ops.DIV: torch.div}
# A concatenation whose operands differ outside the concatenated dim (RES004).
_CONCATENATIONS = frozenset({ops.CAT})
# Forward passes per capture at most: the first, then other stand-in choices after a failure further on.
MAX_ATTEMPTS = 4

T = TypeVar("T")


def is_recoverable(op_name: str) -> bool:
    """Whether a failing call of this function/method name may be a merge that is recorded and stepped over."""
    op = ops.op_for_name(op_name)[0]
    return op in _ELEMENTWISE or op in _CONCATENATIONS


class Recovery:
    """Which stand-in each stepped-over op of one capture uses, attempt after attempt.

    A capture calls `start()` before each forward pass and `choose(preferred)` at each failing merge, in
    execution order. After a pass that failed further on, `next_plan()` moves the latest merge that still has an
    untried choice to its next one (a depth-first search over the choices), at most MAX_ATTEMPTS passes in all.
    """

    def __init__(self) -> None:
        self._plan: list[list[int]] = []  # per stepped-over op, in order: its choices not yet ruled out
        self._position = 0
        self.attempts = 0

    def start(self) -> None:
        self.attempts += 1
        self._position = 0

    def choose(self, preferred: Sequence[int]) -> int:
        """The operand index to use at the next failing merge; `preferred` orders them best first."""
        if self._position == len(self._plan):
            self._plan.append(list(preferred))
        choice = self._plan[self._position][0]
        self._position += 1
        return choice

    @property
    def stepped_over(self) -> int:
        """How many failing merges the current pass stepped over."""
        return self._position

    def next_plan(self) -> bool:
        """Prepare the next pass after one that failed further on; False when nothing is left to try."""
        del self._plan[self._position:]
        while self._plan and len(self._plan[-1]) == 1:
            self._plan.pop()
        if not self._plan or self.attempts >= MAX_ATTEMPTS:
            return False
        self._plan[-1].pop(0)
        return True


@dataclass
class SteppedOver:
    """A failing merge's stand-in value and what went wrong, for the op's `error`."""

    value: torch.Tensor
    message: str


def step_over(op_name: str, args: Any, kwargs: Any, length: Callable[[torch.Tensor], int], recovery: Recovery) -> SteppedOver | None:
    """The stand-in for a call that failed, when it is a merge whose operands' shapes do not fit together
    (else None: the failure is the model's, and the capture reports it). `length(t)` is how many ops led to
    operand `t` (its path length): the stand-in follows the branch of an add, the skip of a concatenation."""
    op, inplace = ops.op_for_name(op_name)
    tensors = list(iter_tensors((args, kwargs)))
    if len(tensors) < 2:
        return None
    shapes = [tuple(int(d) for d in t.shape) for t in tensors]
    listed = " and ".join(_shape_text(s) for s in shapes)
    if op in _ELEMENTWISE and len(tensors) == 2 and not _broadcastable(*shapes):
        longer_first = sorted(range(2), key=lambda i: -length(tensors[i]))
        return SteppedOver(tensors[recovery.choose(longer_first)], f"operands of shapes {listed} cannot be combined")
    if op in _ELEMENTWISE and len(tensors) == 2 and inplace and not fits_in_place(*shapes):
        # `out += x` where `out` is the narrower operand: the sum out of place is what the model meant
        value = _OUT_OF_PLACE[op](tensors[0], tensors[1])
        return SteppedOver(value, f"in place, the sum {_shape_text(tuple(value.shape))} of operands of shapes {listed} does not fit the first")
    if op in _CONCATENATIONS and len({len(s) for s in shapes}) == 1:
        dim = _cat_dim(args, kwargs) % len(shapes[0])
        if all(_without(s, dim) == _without(shapes[0], dim) for s in shapes):
            return None
        skip_first = sorted(range(len(tensors)), key=lambda i: length(tensors[i]))
        reference = shapes[recovery.choose(skip_first)]
        value = torch.cat([_fit(t, reference, dim) for t in tensors], dim)
        return SteppedOver(value, f"operands of shapes {listed} cannot be concatenated on dim {dim}")
    return None


def _broadcastable(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def fits_in_place(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether `a op= b` can write its result into `a`: broadcasting `b` must not enlarge `a`."""
    return len(b) <= len(a) and all(y == 1 or x == y for x, y in zip(reversed(a), reversed(b)))


def _cat_dim(args: Any, kwargs: Any) -> int:
    if isinstance(args, (list, tuple)) and len(args) > 1 and isinstance(args[1], int):
        return args[1]
    value = (kwargs or {}).get("dim", (kwargs or {}).get("axis", 0))
    return value if isinstance(value, int) else 0


def _without(shape: tuple[int, ...], dim: int) -> tuple[int, ...]:
    return shape[:dim] + shape[dim + 1:]


def _fit(tensor: torch.Tensor, shape: tuple[int, ...], dim: int) -> torch.Tensor:
    """`tensor` zero-padded or center-cropped to `shape` in every dim but `dim`."""
    pads: list[int] = []
    for index in reversed(range(len(shape))):
        grow = 0 if index == dim else shape[index] - int(tensor.shape[index])
        pads += [grow // 2, grow - grow // 2]
    return F.pad(tensor, pads) if any(pads) else tensor


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass
class Attempt(Generic[T]):
    """One forward pass of a capture: what it recorded, and the failure that stopped it (None: it finished)."""

    state: T
    failure: BaseException | None
    reached: int  # how far it got (nodes recorded): of passes that all fail, the furthest is audited
    stepped_over: int = 0

    def stopped(self) -> BaseException | None:
        """The failure that cut this pass short, for a partial graph; raised instead when no merge was stepped
        over before it (the model itself fails on these inputs, and that is the target's error)."""
        if self.failure is not None and not self.stepped_over:
            raise self.failure
        return self.failure


def run_recovering(attempt: Callable[[Recovery], Attempt[T]]) -> Attempt[T]:
    """Run `attempt` (one forward pass) until a pass finishes or no stand-in choice is left; then the pass
    that got furthest."""
    recovery = Recovery()
    best: Attempt[T] | None = None
    while True:
        recovery.start()
        result = attempt(recovery)
        result.stepped_over = recovery.stepped_over
        if result.failure is None:
            return result
        if best is None or result.reached > best.reached:
            best = result
        if not recovery.next_plan():
            return best


def mark_partial(graph: AuditGraph, stopped: BaseException | None) -> None:
    """A graph recorded by a pass that `stopped` short says so, in its notes and in `graph.stopped`."""
    if stopped is not None:
        graph.stopped = f"partial graph: the forward pass stopped at {first_line(stopped)}; findings cover the graph up to there"
        graph.notes.append(graph.stopped)


class ForwardFailure(Exception):
    """The model's forward raised at a node that no rule explains; says where, for the one-line error."""

    def __init__(self, node: str, target: str, owner: str | None, site: tuple[str, int] | None, cause: BaseException) -> None:
        self.node, self.target, self.owner, self.site, self.cause = node, target, owner, site, cause
        where = f"{site[0]}:{site[1]}" if site else "?"
        owner_text = f" in `{owner}`" if owner else ""
        super().__init__(f"`{target}`{owner_text} ({where}): {first_line(cause)}")
