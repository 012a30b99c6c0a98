"""What the init rules know about a weight's initial values: `Init`, asked through `ctx.init_of(param)`.

Two sources answer the same questions. With real weights, `Measured` reads the values (a sample of the entries
for the spread, early exits for symmetry). When the model was built without weights (meta), the init calls
recorded while it was built answer instead (`auditor.loading.inits`). The rules never know which one spoke;
`init_of` returns None when neither knows (values computed from other weights while building on meta, a write
the record could not follow).
"""

from __future__ import annotations

import math
from typing import Any

# Weights measured per tensor at most (whole output units, evenly spaced): std to within about 2%.
SAMPLE = 1 << 14


class Init:
    """Answers about one weight tensor's initial values. Each answer may be None: not known."""

    how: str = ""  # where the answers come from, for messages: "values", "nn.init.normal_(std=0.02) at net.py:12"

    def std_mean(self) -> tuple[float, float] | None:
        """Standard deviation and mean of the entries."""
        raise NotImplementedError

    def constant(self, tolerance: float, skip_row: int | None = None) -> float | None:
        """The value every entry has (within `tolerance` relative to the mean magnitude), ignoring row `skip_row`
        (an embedding's padding row); None when the entries differ or it is not known."""
        raise NotImplementedError

    def identical_units(self, tolerance: float, unit_dim: int = 0) -> bool | None:
        """Whether every output unit (slice along `unit_dim`) holds the same weights; None when not known."""
        raise NotImplementedError

    def block_deviations(self, blocks: int) -> list[float | None] | None:
        """For `blocks` equal blocks along dim 0 (an LSTM's gates): how far each is from (scaled) orthogonal,
        || W^T W / c - I ||_F / sqrt(n) for its smaller Gram matrix (0 orthogonal, about 1 random; None for a
        zero block); None when not known."""
        raise NotImplementedError


class Measured(Init):
    """The answers read from a real tensor's values."""

    how = "values"

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor.detach()

    def std_mean(self) -> tuple[float, float]:
        import torch

        with torch.no_grad():
            std, mean = torch.std_mean(_sample(self.tensor).float())
        return float(std), float(mean)

    def constant(self, tolerance: float, skip_row: int | None = None) -> float | None:
        weight = _without_row(self.tensor.float(), skip_row)
        first = weight.flatten()[: max(1, weight.numel() // max(1, weight.shape[0]))]
        # A random weight fails this at once: entries that differ within the first unit.
        if float(first.max() - first.min()) > 2 * tolerance * float(first.abs().mean()) + 1e-12:
            return None
        low, high = weight.aminmax()
        if float(high - low) > tolerance * float(weight.abs().mean()):
            return None
        return float(weight.flatten()[0])

    def identical_units(self, tolerance: float, unit_dim: int = 0) -> bool:
        units = self.tensor.float().movedim(unit_dim, 0).flatten(1)
        # Two units that differ already rule it out: the usual answer, found without reading the whole tensor.
        first_scale = float(units[0].abs().mean())
        if units.shape[0] > 1 and float((units[1] - units[0]).abs().max()) > 2 * tolerance * first_scale + 1e-12:
            return False
        return float((units - units[0]).abs().max()) <= tolerance * float(units.abs().mean())

    def block_deviations(self, blocks: int) -> list[float | None] | None:
        import torch

        if self.tensor.shape[0] % blocks:
            return None
        with torch.no_grad():
            return [_deviation(torch, block) for block in self.tensor.float().flatten(1).chunk(blocks, dim=0)]


def measured(param: Any) -> Init | None:
    """`Measured` for a tensor with values; None for meta and fake tensors (they have none)."""
    if getattr(param, "is_meta", False) or type(param).__name__ == "FakeTensor":
        return None
    return Measured(param)


def orthogonality_deviation(rows: int, cols: int) -> float:
    """The deviation `block_deviations` measures, expected for an iid random (rows x cols) block:
    sqrt((k + 1) / m) with k, m the smaller and larger side (about 1 for a square block)."""
    small, large = min(rows, cols), max(rows, cols)
    return math.sqrt((small + 1) / large)


def _sample(weight: Any) -> Any:
    """Evenly spaced output units of a large weight, at least `SAMPLE` entries: enough for a std within 1%,
    at a fraction of the cost on a ViT-B's 86M parameters."""
    rows = int(weight.shape[0])
    per_row = max(1, weight.numel() // max(rows, 1))
    step = max(1, rows // max(1, -(-SAMPLE // per_row)))
    return weight[::step] if step > 1 else weight


def _without_row(weight: Any, row: int | None) -> Any:
    if row is None or weight.shape[0] < 2:
        return weight
    keep = [i for i in range(weight.shape[0]) if i != row % weight.shape[0]]
    return weight[keep]


def _deviation(torch: Any, block: Any) -> float | None:
    rows, cols = block.shape
    gram = block.T @ block if rows >= cols else block @ block.T
    n = gram.shape[0]
    scale = float(gram.diagonal().mean())
    if not math.isfinite(scale) or scale <= 0:
        return None
    identity = torch.eye(n, dtype=gram.dtype, device=gram.device)
    return float(torch.linalg.matrix_norm(gram / scale - identity)) / math.sqrt(n)
