"""The distribution an init call draws a region of a weight from, and its statistics, without drawing the weight.

`from_init_call` turns an `nn.init.*` call (its arguments and the shape it writes) into a `Dist`; in-place methods
(`normal_`, `uniform_`, `fill_`, `zero_`) map to the same kinds, and elementwise ones applied afterwards
(`mul_`, `clamp_`, `erfinv_`, as timm's truncated normal does) are kept as a chain. Statistics are exact formulas
where one exists (normal, uniform, constant, truncated normal, orthogonal, eye, dirac, sparse); an iid kind with a
chain is replayed on a small seeded sample (the shape does not matter for iid entries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

IID = frozenset({"normal", "uniform", "trunc_normal", "constant"})
STRUCTURED = frozenset({"orthogonal", "eye", "dirac", "sparse"})
# Elementwise in-place methods whose effect on iid entries a replay reproduces (scalar arguments only).
ELEMENTWISE = frozenset({
    "mul_", "div_", "add_", "sub_", "clamp_", "clamp_min_", "clamp_max_", "clip_", "erfinv_", "erf_", "abs_",
    "neg_", "exp_", "log_", "sqrt_", "rsqrt_", "pow_", "sign_", "tanh_", "sigmoid_", "fmod_", "remainder_",
    "round_", "floor_", "ceil_", "trunc_", "reciprocal_",
})
_SCALING = frozenset({"mul_", "div_"})
_REPLAY = 1 << 14

Chain = tuple[tuple[str, tuple[Any, ...], tuple[tuple[str, Any], ...]], ...]


@dataclass(frozen=True)
class Summary:
    """What was measured on real values when a parameter was moved to meta (`torch.zeros(...)`, `randn * s`)."""

    std: float
    mean: float
    spread: float  # (max - min) / mean |entry|: 0 for a constant tensor
    unit_spreads: tuple[float, ...]  # per dim d: max |unit - first unit| / mean |entry| for units along d
    first: float  # the first entry (the value of a constant tensor)


@dataclass(frozen=True)
class Dist:
    """How a region of a weight (rows x entries per row) was last written."""

    kind: str  # IID kinds, STRUCTURED kinds, "values" (a Summary), "uninitialized" or "unknown"
    args: tuple[float, ...] = ()
    shape: tuple[int, int] = (1, 1)  # the region a structured init wrote (rows, entries per row)
    chain: Chain = ()
    identical_units: bool = False  # its rows are copies of one row (copied from an expanded row)
    how: str = ""  # for notes and messages: "nn.init.normal_(std=0.02) at net.py:12"
    summary: Summary | None = None
    # The user's calls that wrote it, the drawing call first (then the elementwise steps): (file, line, name), such
    # as ("net.py", 12, "normal_"). `--fix` in place edits them; a constructor's default init is on its line.
    writes: tuple[tuple[str, int, str], ...] = ()

    @property
    def known(self) -> bool:
        return self.kind in IID or self.kind in STRUCTURED or self.kind == "values"

    def then(self, name: str, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...], how: str) -> Dist:
        """This distribution after an elementwise in-place op with scalar arguments."""
        if not self.known:
            return self
        if self.kind in IID or name in _SCALING:
            return replace(self, chain=self.chain + ((name, args, kwargs),))
        return unknown(f"{self.how}, then {how}")

    def std_mean(self) -> tuple[float, float] | None:
        if not self.known:
            return None
        if self.kind in IID:
            return _replayed(self)[:2] if self.chain else _iid_moments(self.kind, self.args)
        scale = _scale(self.chain)
        if scale is None:
            return None
        std, mean = (self.summary.std, self.summary.mean) if self.summary is not None else _structured_moments(self)
        return std * abs(scale), mean * scale

    def constant_value(self, tolerance: float = 0.0) -> float | None:
        """The value of every entry, when the distribution is a single one (its spread within `tolerance` of
        the mean magnitude)."""
        if self.kind in IID:
            if self.chain:
                std, mean, constant = _replayed(self)
                return mean if constant else None
            if self.kind == "uniform" and abs(self.args[1] - self.args[0]) <= tolerance * abs(sum(self.args) / 2):
                return sum(self.args) / 2
            return self.args[0] if self.kind == "constant" else None
        if self.kind == "values" and self.summary is not None and self.summary.spread <= tolerance:
            scale = _scale(self.chain)
            return None if scale is None else self.summary.first * scale
        return None

    def rows_identical(self, tolerance: float, unit_dim: int) -> bool | None:
        """Whether all units (along `unit_dim`) of the region hold the same weights."""
        if not self.known:
            return None
        if self.constant_value(tolerance) is not None:
            return True
        if self.identical_units and unit_dim == 0:
            return True
        if self.kind == "values" and self.summary is not None:
            spreads = self.summary.unit_spreads
            return spreads[unit_dim] <= tolerance if unit_dim < len(spreads) else None
        return False  # random draws and structured inits differ from unit to unit

    def orthogonal_deviation(self, rows: int, cols: int, whole: bool) -> float | None:
        """The deviation of a block of `rows` x `cols` of this region from orthogonal (`whole`: the region
        written by one structured call), as `Init.block_deviations` measures it: 0 for an orthogonal init,
        expected values for random ones."""
        from auditor.graph.inits import orthogonality_deviation

        region_rows = self.shape[0]
        value = self.constant_value()
        if value is not None:
            return None if value == 0 else math.sqrt(min(rows, cols) - 1)
        if self.kind in ("orthogonal", "eye") and _scale(self.chain) is not None and not self.identical_units:
            if region_rows <= cols or whole:
                return 0.0  # orthonormal rows (any subset of them), or the whole tall matrix's orthonormal columns
            # A slice of a tall orthogonal matrix: like a random block, its Gram matrix's fluctuation damped by
            # the orthogonality of the whole (by sqrt(1 - share), as for a Jacobi ensemble).
            return orthogonality_deviation(rows, cols) * math.sqrt(1 - rows / region_rows)
        if self.kind in IID and not self.identical_units:
            return orthogonality_deviation(rows, cols)
        return None

    def describe(self) -> str:
        return self.how or self.kind


def unknown(how: str) -> Dist:
    return Dist("unknown", how=how)


def from_init_call(name: str, arguments: dict[str, Any], shape: tuple[int, ...], how: str) -> Dist:
    """The distribution of `torch.nn.init.<name>(tensor, **arguments)` on a tensor of `shape`."""
    import torch.nn.init as init

    rows = shape[0] if shape else 1
    region = (rows, max(1, math.prod(shape) // max(1, rows)))
    get = arguments.get
    try:
        if name == "uniform_":
            return Dist("uniform", (float(get("a", 0.0)), float(get("b", 1.0))), region, how=how)
        if name == "normal_":
            return Dist("normal", (float(get("mean", 0.0)), float(get("std", 1.0))), region, how=how)
        if name == "trunc_normal_":
            args = (float(get("mean", 0.0)), float(get("std", 1.0)), float(get("a", -2.0)), float(get("b", 2.0)))
            return Dist("trunc_normal", args, region, how=how)
        if name in ("constant_", "ones_", "zeros_"):
            value = {"ones_": 1.0, "zeros_": 0.0}.get(name, get("val"))
            return Dist("constant", (float(value),), region, how=how)
        if name in ("kaiming_uniform_", "kaiming_normal_"):
            fan = _fan(shape, get("mode", "fan_in"))
            std = init.calculate_gain(get("nonlinearity", "leaky_relu"), get("a", 0)) / math.sqrt(fan)
            if name == "kaiming_normal_":
                return Dist("normal", (0.0, std), region, how=how)
            return Dist("uniform", (-math.sqrt(3.0) * std, math.sqrt(3.0) * std), region, how=how)
        if name in ("xavier_uniform_", "xavier_normal_"):
            std = float(get("gain", 1.0)) * math.sqrt(2.0 / (_fan(shape, "fan_in") + _fan(shape, "fan_out")))
            if name == "xavier_normal_":
                return Dist("normal", (0.0, std), region, how=how)
            return Dist("uniform", (-math.sqrt(3.0) * std, math.sqrt(3.0) * std), region, how=how)
        if name == "orthogonal_":
            return Dist("orthogonal", (float(get("gain", 1.0)),), region, how=how)
        if name == "eye_":
            return Dist("eye", (), region, how=how)
        if name == "dirac_":
            return Dist("dirac", (float(min(shape[0] // int(get("groups", 1)), shape[1]) * int(get("groups", 1))),), region, how=how)
        if name == "sparse_":
            zeros = math.ceil(float(get("sparsity")) * rows) / rows
            return Dist("sparse", (zeros, float(get("std", 0.01))), region, how=how)
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        pass
    return unknown(how)


def _fan(shape: tuple[int, ...], mode: str) -> int:
    """torch.nn.init's fan_in / fan_out of a weight of `shape`."""
    if len(shape) < 2:
        raise ValueError("fan of a tensor with fewer than 2 dimensions")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive if mode == "fan_in" else shape[0] * receptive


def _iid_moments(kind: str, args: tuple[float, ...]) -> tuple[float, float]:
    if kind == "normal":
        mean, std = args
        return abs(std), mean
    if kind == "uniform":
        low, high = args
        return abs(high - low) / math.sqrt(12.0), (low + high) / 2
    if kind == "constant":
        return 0.0, args[0]
    mean, std, low, high = args  # truncated normal
    alpha, beta = (low - mean) / std, (high - mean) / std
    mass = _cdf(beta) - _cdf(alpha)
    shift = (_pdf(alpha) - _pdf(beta)) / mass
    variance = 1 + (alpha * _pdf(alpha) - beta * _pdf(beta)) / mass - shift**2
    return std * math.sqrt(max(variance, 0.0)), mean + std * shift


def _structured_moments(dist: Dist) -> tuple[float, float]:
    rows, cols = dist.shape
    if dist.kind == "orthogonal":
        return dist.args[0] / math.sqrt(max(rows, cols)), 0.0  # unit-norm rows (or columns), scaled by the gain
    if dist.kind == "sparse":
        zeros, std = dist.args
        return std * math.sqrt(1 - zeros), 0.0
    ones = min(rows, cols) if dist.kind == "eye" else dist.args[0]
    share = ones / (rows * cols)
    return math.sqrt(share * (1 - share)), share


def _scale(chain: Chain) -> float | None:
    """The factor a chain of scalings multiplies by; None when the chain does more than scale."""
    factor = 1.0
    for name, args, kwargs in chain:
        if name not in _SCALING or len(args) != 1 or kwargs or not isinstance(args[0], (int, float)):
            return None
        factor = factor * args[0] if name == "mul_" else factor / args[0]
    return factor


@lru_cache(maxsize=256)
def _replayed(dist: Dist) -> tuple[float, float, bool]:
    """(std, mean, constant) of an iid distribution after its chain, measured on a seeded sample of it."""
    import torch

    generator = torch.Generator().manual_seed(0)
    sample = torch.empty(_REPLAY, dtype=torch.float64)
    if dist.kind == "normal":
        sample.normal_(dist.args[0], dist.args[1], generator=generator)
    elif dist.kind == "uniform":
        sample.uniform_(dist.args[0], dist.args[1], generator=generator)
    elif dist.kind == "constant":
        sample.fill_(dist.args[0])
    else:
        mean, std, low, high = dist.args
        torch.nn.init.trunc_normal_(sample, mean, std, low, high, generator=generator)
    for name, args, kwargs in dist.chain:
        getattr(sample, name)(*args, **dict(kwargs))
    std, mean = torch.std_mean(sample)
    return float(std), float(mean), bool(sample.max() == sample.min())


def _pdf(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _cdf(x: float) -> float:
    return (1 + math.erf(x / math.sqrt(2))) / 2
