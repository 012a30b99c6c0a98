"""What the probes measured: plain numbers (no torch), read by the probe rules and written to JSON `probes`.

Every location is a module qualified name (as in findings) plus, for a functional op, the user's forward line;
the probe rules turn these into findings pointing at graph nodes (`ProbeContext.locate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Site = tuple[str, int]


@dataclass
class LayerStats:
    """One weight layer (a module that owns a weight matrix), in the order the forward pass first calls it.

    Averaged over the gradient probe's passes; `None` where a value does not exist (an integer input has no
    gradient). Activations are those of the layer's first call in a pass.
    """

    module: str
    type: str
    grad_norm: float | None = None  # ||dL/dW|| over the layer's own parameters
    weight_norm: float | None = None
    act_mean: float | None = None  # the layer's output
    act_std: float | None = None
    in_std: float | None = None  # the tensor the layer reads
    in_grad_norm: float | None = None  # ||dL/d input||: the gradient as it flows back through this point
    raw_input: bool = False  # the layer reads a model input directly (its scale is the data's, not the model's)

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "type": self.type,
            "grad_norm": _num(self.grad_norm),
            "weight_norm": _num(self.weight_norm),
            "act_mean": _num(self.act_mean),
            "act_std": _num(self.act_std),
            "in_std": _num(self.in_std),
            "in_grad_norm": _num(self.in_grad_norm),
        }


@dataclass
class OpEvent:
    """One op the probe singles out: where a non-finite value first appeared, or a value beyond float16."""

    op: str  # how people read it: "F.linear", "torch.log", "nn.LSTM", "Tensor.__matmul__"
    module: str  # the innermost module running ("" for the root's own forward)
    site: Site | None = None  # the user's forward line that made the call
    value: float | None = None  # max |x| produced (inf/nan for non-finite events)
    phase: str = "forward"  # "forward" or "backward" (the op's backward produced it)
    detail: str = ""  # e.g. "weight `fc.weight` contains NaN", "the model input already exceeds 65504"

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"op": self.op, "module": self.module, "phase": self.phase, "value": _num(self.value)}
        record["file"], record["line"] = self.site if self.site else (None, None)
        if self.detail:
            record["detail"] = self.detail
        return record


@dataclass
class Precision:
    """Mixed precision: float32 activation ranges against float16's, autocast against float32, AMP steps."""

    autocast_dtype: str  # "bfloat16" on CPU, "float16" on CUDA
    max_abs: float = 0.0  # largest finite |activation| in the float32 passes
    max_abs_module: str | None = None
    overflow: list[OpEvent] = field(default_factory=list)  # ops whose float32 output exceeds float16's max, first first
    overflow_ops: int = 0  # how many ops exceeded it (the list keeps the first few)
    input_max_abs: float = 0.0
    autocast_error: float | None = None  # max|autocast - float32| / max|float32| on the model output
    autocast_nonfinite: bool = False
    divergence: OpEvent | None = None  # the first module whose autocast output diverges beyond tolerance
    steps: int = 0  # training steps run with autocast + GradScaler + unscale_ + clipping
    skipped_steps: int = 0  # steps the GradScaler skipped (inf/NaN gradients)
    losses: list[float] = field(default_factory=list)
    finite: bool = True  # loss and parameters stayed finite through the steps
    loss_scale: float | None = None  # GradScaler's scale after the steps

    def to_json(self) -> dict[str, Any]:
        return {
            "autocast_dtype": self.autocast_dtype,
            "float16_max": FLOAT16_MAX,
            "max_abs": _num(self.max_abs),
            "max_abs_module": self.max_abs_module,
            "input_max_abs": _num(self.input_max_abs),
            "overflow_ops": self.overflow_ops,
            "overflow": [e.to_json() for e in self.overflow],
            "autocast_error": _num(self.autocast_error),
            "autocast_nonfinite": self.autocast_nonfinite,
            "divergence": self.divergence.to_json() if self.divergence else None,
            "train_steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "losses": [_num(v) for v in self.losses],
            "finite": self.finite,
            "loss_scale": _num(self.loss_scale),
        }


@dataclass
class Clipping:
    """Gradient norms over the training steps (after unscale_, before clipping) against a clip threshold."""

    threshold: float | None  # the evaluated max_norm (--clip-norm / `clip-norm`); None when none was given
    norms: list[float] = field(default_factory=list)  # finite total norms, one per step
    clipped: int = 0  # steps whose norm exceeded the threshold
    recommended: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "norms": [_num(v) for v in self.norms],
            "steps": len(self.norms),
            "clipped": self.clipped,
            "recommended": _num(self.recommended),
        }


@dataclass
class Measurements:
    """Everything one probe run measured on one model."""

    device: str
    mode: str  # "train", or "eval" when the model cannot run a training-mode forward on these inputs
    loss: str  # the surrogate loss: "cross_entropy", "mse" or "output"; or a given loss's name ("training_step")
    passes: int
    layers: list[LayerStats] = field(default_factory=list)
    output_std: float | None = None
    non_finite: OpEvent | None = None
    non_finite_where: str | None = None  # "output", "loss" or "gradients": what was non-finite
    precision: Precision | None = None
    clipping: Clipping | None = None
    seconds: float = 0.0  # the whole probe
    step_seconds: float | None = None  # one float32 forward+backward pass, for scale
    skipped: str | None = None  # why nothing could be measured (the forward fails, the model cannot be copied)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "mode": self.mode,
            "loss": self.loss,
            "passes": self.passes,
            "seconds": round(self.seconds, 3),
            "step_seconds": None if self.step_seconds is None else round(self.step_seconds, 3),
            "layers": [layer.to_json() for layer in self.layers],
            "output_std": _num(self.output_std),
            "non_finite": None if self.non_finite is None else {**self.non_finite.to_json(), "where": self.non_finite_where},
            "precision": self.precision.to_json() if self.precision else None,
            "clipping": self.clipping.to_json() if self.clipping else None,
            "skipped": self.skipped,
            "notes": list(self.notes),
        }


FLOAT16_MAX = 65504.0


def _num(value: float | None) -> float | str | None:
    """JSON has no inf or NaN: they are written as the strings "inf", "-inf", "nan"; finite values rounded to 6 significant digits."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(f"{value:.6g}")
