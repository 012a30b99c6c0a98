from __future__ import annotations

from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.rule import ProbeContext, Rule, register


def _n(value: float) -> str:
    return f"{value:.3g}"


@register
class ClipThreshold(Rule):
    """
    ## What it does
    With `--probe` and a clip threshold (`--clip-norm 1.0`, or `clip-norm` under `[tool.auditor.settings]`):
    records the total gradient norm of every training step the probe runs (its float32 passes and its AMP
    steps, after `unscale_`, before clipping) and flags a threshold that clips every step, or one so far above
    every norm seen (by
    `clip-never-factor`, default 10) that it never will. It suggests a threshold from the observed norms:
    twice their median, so that clipping catches spikes rather than every step. Without a threshold the norms
    and the suggestion are still in the JSON `probes.clipping`.

    ## Why is this bad?
    `clip_grad_norm_` rescales all gradients together when their norm exceeds the threshold. A threshold below
    the typical norm clips every step: training becomes normalized-gradient descent whose step size is set by
    the threshold, not the learning rate (and the learning-rate schedule stops meaning what it says). A
    threshold far above every norm is a no-op that only looks like protection against gradient spikes.

    ## Example
    ```python
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.01)  # norms are ~5: clips every step
    ```

    ## Use instead
    ```python
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)  # about 2x the typical norm
    ```

    ## Fix
    No automatic fix. The probe measures at initialization, where norms are usually largest; check the norms
    your training logs (`clip_grad_norm_` returns the norm) once training has settled.

    ## References
    Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent neural networks", ICML 2013.
    Seetharaman et al., "AutoClip: Adaptive Gradient Clipping for Source Separation Networks", MLSP 2020.
    """

    code = "CLP002"
    name = "clip-threshold"
    severity = Severity.WARNING
    summary = "probe: a clip threshold that clips every step, or never"
    scope = "probe"
    settings = {"clip-norm": 0.0, "clip-never-factor": 10.0}

    def check(self, ctx: ProbeContext) -> Iterator[Finding]:
        clipping = ctx.measurements.clipping
        if clipping is None or clipping.threshold is None or not clipping.norms:
            return
        threshold, norms = clipping.threshold, clipping.norms
        seen = f"gradient norms {_n(min(norms))}-{_n(max(norms))} over {len(norms)} steps"
        suggestion = f"; about {_n(clipping.recommended)} would clip only spikes" if clipping.recommended else ""
        if clipping.clipped == len(norms):
            message = f"clip threshold {_n(threshold)} clips every probe step ({seen}, after unscale_){suggestion}"
        elif max(norms) * float(ctx.setting("clip-never-factor")) < threshold:
            message = f"clip threshold {_n(threshold)} never clips: {seen} stay far below it{suggestion}"
        else:
            return
        yield self.finding(message, at=ctx.output_node())
