"""Inits known as distributions, written back as the `nn.init` calls that draw them: the `INITS` table in the
`model.py` of a model fixed without its weights.

Each parameter's init is what the record of the user's build says (`auditor.loading.inits`) or what a fix planned
instead (`initplan.py`): pieces of rows, each drawn from one distribution. Every distribution the record knows is
one `nn.init` call on those rows, plus the elementwise steps that followed it (timm's truncated normal is a chain
of `mul_`/`add_`/`clamp_`), so the written model draws its weights as the user's code did. Two kinds only have a
stand-in: values measured when a parameter was created (`nn.Parameter(torch.randn(n) * 0.02)`) are drawn from a
normal with their mean and std (a constant stays that constant), and rows copied from one row are not written.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

from auditor.loading.distributions import Dist

# (nn.init function, its keyword arguments, elementwise steps after it: (Tensor method, args, kwargs))
Call = tuple[str, dict[str, Any], tuple[tuple[str, tuple[Any, ...], dict[str, Any]], ...]]
Target = Any  # "name" (the whole parameter) or ("name", first row, end row)


@dataclass
class InitTable:
    """The init calls of a written model, grouped by call, with where each came from."""

    groups: dict[str, list[Target]] = field(default_factory=dict)  # a call's source text -> what it draws
    sources: dict[str, list[str]] = field(default_factory=dict)  # ... -> where the call comes from
    stand_ins: list[str] = field(default_factory=list)  # parameters drawn from a moment-matched normal
    unwritten: dict[str, str] = field(default_factory=dict)  # parameter -> why its init is not in the table

    def add(self, name: str, init: Any, source: str | None = None, unknown: str | None = None) -> None:
        """Add a parameter's init (a `Recorded`: pieces of rows; `source` names the fix that planned it); one that
        cannot be written goes to `unwritten` (`unknown`: why the record does not know it)."""
        pieces = getattr(init, "pieces", None)
        if not pieces:
            self.unwritten[name] = f"its init is not known: {unknown}" if unknown else "its init is not known"
            return
        rows = pieces[-1][1]
        planned: list[tuple[Target, Call, str]] = []
        for start, end, dist in pieces:
            calls = _calls(dist, start, end)
            if isinstance(calls, str):
                self.unwritten[name] = calls
                return
            for first, last, call in calls:
                target = name if (first, last) == (0, rows) else (name, first, last)
                planned.append((target, call, source or dist.describe()))
            if dist.kind == "values" and dist.constant_value(0.0) is None:
                self.stand_ins.append(name)
        for target, call, how in planned:
            function, arguments, steps = call
            key = f"({function!r}, {arguments!r}, {[list(step) for step in steps]!r}"
            self.groups.setdefault(key, []).append(target)
            if how not in self.sources.setdefault(key, []):
                self.sources[key].append(how)

    def render(self) -> str:
        """The `INITS = [...]` source, one entry per call, commented with where the call comes from."""
        lines = ["INITS = ["]
        for call, targets in self.groups.items():
            sources = self.sources[call]
            shown = sources[:3] + ([f"and {len(sources) - 3} more"] if len(sources) > 3 else [])
            lines.append(f"    # {'; '.join(shown)}")
            items = textwrap.wrap(", ".join(repr(t) for t in targets), 104, break_long_words=False, break_on_hyphens=False)
            body = "\n".join(f"        {line}" for line in items)
            lines.append(f"    {call}, [\n{body}\n    ]),")
        lines.append("]")
        return "\n".join(lines)


def _calls(dist: Dist, start: int, end: int) -> list[tuple[int, int, Call]] | str:
    """The calls that draw rows [start, end) as `dist` does, or why none does."""
    if dist.identical_units:
        return f"its rows were copied from one row ({dist.describe()}), which no init call draws"
    steps = tuple((name, tuple(args), dict(kwargs)) for name, args, kwargs in dist.chain)
    whole = _iid(dist, steps)
    if whole is not None:
        return [(start, end, whole)]
    if dist.kind in ("orthogonal", "eye", "dirac", "sparse"):
        block = dist.shape[0]
        if block < 1 or (end - start) % block:
            return f"part of a structured init ({dist.describe()}) was overwritten"
        call = _structured(dist, steps)
        if call is None:
            return f"{dist.describe()} cannot be written as one nn.init call"
        return [(row, row + block, call) for row in range(start, end, block)]
    return f"its init is not known ({dist.describe()})"


def _iid(dist: Dist, steps: tuple[Any, ...]) -> Call | None:
    args = dist.args
    if dist.kind == "normal":
        return ("normal_", {"mean": args[0], "std": args[1]}, steps)
    if dist.kind == "uniform":
        return ("uniform_", {"a": args[0], "b": args[1]}, steps)
    if dist.kind == "trunc_normal":
        return ("trunc_normal_", {"mean": args[0], "std": args[1], "a": args[2], "b": args[3]}, steps)
    if dist.kind == "constant":
        return ("constant_", {"val": args[0]}, steps)
    if dist.kind == "values":  # measured when it was created: the chain is in its statistics already
        value = dist.constant_value(0.0)
        if value is not None:
            return ("constant_", {"val": value}, ())
        moments = dist.std_mean()
        return ("normal_", {"mean": moments[1], "std": moments[0]}, ()) if moments is not None else None
    return None


def _structured(dist: Dist, steps: tuple[Any, ...]) -> Call | None:
    rows, cols = dist.shape
    if dist.kind == "orthogonal":
        return ("orthogonal_", {"gain": dist.args[0]}, steps)
    if dist.kind == "eye":
        return ("eye_", {}, steps)
    if dist.kind == "dirac":  # the count of ones it set tells the groups
        for groups in range(1, rows + 1):
            if rows % groups == 0 and min(rows // groups, cols) * groups == dist.args[0]:
                return ("dirac_", {"groups": groups}, steps)
        return None
    if dist.kind == "sparse":  # sparse_ zeroes ceil(sparsity * rows) entries per column: ask for just under k
        zeros, std = dist.args
        return ("sparse_", {"sparsity": (round(zeros * rows) - 0.5) / rows, "std": std}, steps)
    return None


def same_init(planned: Any, written: Any, moments_only: bool = False) -> bool:
    """Whether two inits give the statistics the init rules read (std and mean, a constant value, identical units;
    `moments_only`: std and mean alone, for a stand-in)."""
    if planned is None or written is None:
        return planned is written
    a, b = planned.std_mean(), written.std_mean()
    if (a is None) != (b is None) or (a is not None and b is not None and not all(
            math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12) for x, y in zip(a, b))):
        return False
    if moments_only:
        return True
    if (planned.constant(1e-3) is None) != (written.constant(1e-3) is None):
        return False
    return planned.identical_units(1e-3) == written.identical_units(1e-3)
