"""Seeded re-initialization schemes: He/Kaiming, Xavier/Glorot, orthogonal per gate block.

Every draw uses its own CPU generator seeded from the run's seed and the tensor's qualified name, so a re-init
is reproducible and does not depend on which other fixes ran; values are drawn on CPU and copied in place,
whatever the parameter's device and dtype.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable

import torch
import torch.nn as nn

from auditor.graph import ops

GATES = {"LSTM": 4, "LSTMCell": 4, "GRU": 3, "GRUCell": 3, "RNN": 1, "RNNCell": 1}


def generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed + zlib.crc32(key.encode())) % (2**63))


def scheme_for(activation: str | None, attrs: dict | None = None) -> tuple[str, Callable[[torch.Tensor, torch.Generator], None]]:
    """(description, init function) for a weight followed by `activation` (an op name, None for none)."""
    attrs = attrs or {}
    if activation in ("leaky_relu", "rrelu", "prelu"):
        slope = float(attrs.get("negative_slope", 0.01 if activation == "leaky_relu" else 0.25))
        return f"He normal (gain {nn.init.calculate_gain('leaky_relu', slope):.3g}, {activation})", lambda t, g: nn.init.kaiming_normal_(t, a=slope, nonlinearity="leaky_relu", generator=g)
    if activation == "selu":
        return "LeCun normal (He with gain 1, selu)", lambda t, g: nn.init.kaiming_normal_(t, nonlinearity="linear", generator=g)
    if activation in ops.RELU_LIKE:
        return f"He normal (gain {math.sqrt(2):.3g}, {activation})", lambda t, g: nn.init.kaiming_normal_(t, nonlinearity="relu", generator=g)
    if activation == "tanh":
        return "Xavier normal (gain 5/3, tanh)", lambda t, g: nn.init.xavier_normal_(t, gain=5 / 3, generator=g)
    what = activation or "no activation"
    return f"Xavier normal (gain 1, {what})", lambda t, g: nn.init.xavier_normal_(t, gain=1.0, generator=g)


def init_call_for(activation: str | None, attrs: dict | None = None) -> tuple[str, str]:
    """`scheme_for` as source code: the `torch.nn.init` function and its arguments after the tensor
    (`("kaiming_normal_", 'nonlinearity="relu"')`), for `--fix` in place."""
    attrs = attrs or {}
    if activation in ("leaky_relu", "rrelu", "prelu"):
        slope = float(attrs.get("negative_slope", 0.01 if activation == "leaky_relu" else 0.25))
        return "kaiming_normal_", f'a={slope!r}, nonlinearity="leaky_relu"'
    if activation == "selu":
        return "kaiming_normal_", 'nonlinearity="linear"'
    if activation in ops.RELU_LIKE:
        return "kaiming_normal_", 'nonlinearity="relu"'
    if activation == "tanh":
        return "xavier_normal_", "gain=5 / 3"
    return "xavier_normal_", ""


def reinit(tensor: torch.Tensor, fill: Callable[[torch.Tensor, torch.Generator], None], gen: torch.Generator) -> None:
    """Draw into a CPU float tensor of the same shape, then copy in place (keeps device, dtype, identity)."""
    scratch = torch.empty(tensor.shape, dtype=torch.float32)
    fill(scratch, gen)
    with torch.no_grad():
        tensor.copy_(scratch.to(tensor.dtype))


def orthogonal_gates(gates: int) -> Callable[[torch.Tensor, torch.Generator], None]:
    """A fill that makes each of the `gates` stacked blocks (rows) orthogonal on its own."""

    def fill(tensor: torch.Tensor, gen: torch.Generator) -> None:
        rows = tensor.shape[0] // gates
        for index in range(gates):
            nn.init.orthogonal_(tensor[index * rows:(index + 1) * rows], generator=gen)

    return fill


def gate_count(module: nn.Module) -> int:
    for cls in type(module).__mro__:
        if cls.__name__ in GATES and cls.__module__.startswith("torch.nn"):
            return GATES[cls.__name__]
    return 1


def is_constant(tensor: torch.Tensor) -> bool:
    """(Near) identical entries: nothing breaks the symmetry between units."""
    if tensor.numel() < 2:
        return False
    values = tensor.detach().float()
    spread = float(values.max() - values.min())
    return spread <= 1e-6 * max(1.0, float(values.abs().max()))
