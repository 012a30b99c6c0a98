"""AMP001-AMP002: conclusions of the mixed-precision probe (`audit --probe`)."""

from __future__ import annotations

import math
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.rule import ProbeContext, Rule, register


def _x(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e5 else f"{value:.2e}"


@register
class AmpOverflow(Rule):
    """
    ## What it does
    With `--probe`: flags activations whose float32 values exceed float16's largest finite value (65504),
    naming the first op that does (its module and, for a functional op, the forward line), the largest value
    and how many ops exceed it. Every op is watched, including functional ones inside a forward (`h @ h.T`)
    that module hooks would miss.

    ## Why is this bad?
    Under `torch.autocast(dtype=torch.float16)` (the CUDA default) such values become `inf`, then NaN, and
    the step is lost; GradScaler only protects gradients, not activations. Typical causes: unnormalized inputs
    (raw pixel sums, physical units), an exploding signal (GRD001), attention masks filled with `-1e9`
    (`masked_fill` raises on float16), manual sums or squares of large activations.

    bfloat16 has float32's range and does not overflow; if you train in bfloat16 only, ignore this rule.
    Setting: `overflow-limit` (default 65504; lower it to keep headroom).

    ## Example
    ```python
    def forward(self, x):
        return self.fc(x * 1e5)  # or an input in raw units far beyond 65504
    ```

    ## Use instead
    ```python
    def forward(self, x):
        return self.fc(self.norm(x))  # normalize inputs; keep large reductions in float32
    ```
    and `scores.masked_fill(mask, torch.finfo(scores.dtype).min)` instead of `-1e9`.

    ## Fix
    No automatic fix: normalize the inputs, rescale the op, or run it outside autocast
    (`with torch.autocast(device_type, enabled=False):` and `.float()`).

    ## References
    Micikevicius et al., "Mixed Precision Training", ICLR 2018.
    PyTorch documentation, "Automatic Mixed Precision package - torch.amp".
    """

    code = "AMP001"
    name = "amp-overflow"
    severity = Severity.WARNING
    summary = "probe: activations beyond the float16 range (65504)"
    scope = "probe"
    settings = {"overflow-limit": 65504.0}

    def check(self, ctx: ProbeContext) -> Iterator[Finding]:
        precision = ctx.measurements.precision
        if precision is None or not precision.overflow:
            return
        limit = float(ctx.setting("overflow-limit"))
        first = precision.overflow[0]
        owner = f" in `{first.module}`" if first.module else ""
        message = f"{first.op}{owner} produces values up to {_x(first.value)} in float32, beyond float16's limit {_x(limit)}"
        if precision.overflow_ops > 1:
            message += f"; {precision.overflow_ops} ops exceed it, up to {_x(precision.max_abs)}"
        if precision.input_max_abs > limit:
            message += f" (the model input itself reaches {_x(precision.input_max_abs)}: normalize it)"
        message += "; under float16 autocast these become inf"
        yield self.finding(message, at=ctx.locate(first.module, first.site), module=first.module)


@register
class AmpDivergence(Rule):
    """
    ## What it does
    With `--probe`: compares the model's output under `torch.autocast` (float16 on CUDA, bfloat16 on CPU) with
    float32 on the same batch (eval mode, dropout off) and flags a relative difference
    ||autocast - float32|| / ||float32|| beyond `amp-tolerance` (default 0.1), naming the first module whose
    output already differs that much. It also runs real training steps with `GradScaler`, `unscale_` and
    clipping (`probe-steps`, default 3, under float16; one under bfloat16, whose float32 range never makes the
    scaler back off), and flags steps whose loss or weights stop being finite, or a scaler that skips every
    step.

    ## Why is this bad?
    Low precision keeps 8 (bfloat16) or 11 (float16) significant bits. Networks tolerate that, unless a
    computation depends on more: a large offset subtracted back out (catastrophic cancellation), positions or
    step counters kept in bfloat16 (it cannot represent 257), variances computed as E[x^2] - E[x]^2, long sums.
    The model then trains on a different function than the one you evaluate in float32, or not at all.
    Healthy models differ by about 1% (bfloat16) or 0.1% (float16).

    ## Example
    ```python
    def forward(self, x):
        h = self.fc(x) + 1000.0  # bfloat16 spacing at 1000 is 8
        return h - 1000.0
    ```

    ## Use instead
    ```python
    def forward(self, x):
        return self.fc(x)  # or keep the sensitive op in float32: with torch.autocast(..., enabled=False)
    ```

    ## Fix
    No automatic fix: reformulate the op, or compute it in float32 outside autocast.

    ## References
    Micikevicius et al., "Mixed Precision Training", ICLR 2018.
    Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019.
    """

    code = "AMP002"
    name = "amp-divergence"
    severity = Severity.WARNING
    summary = "probe: autocast output differs from float32 beyond tolerance"
    scope = "probe"
    settings = {"amp-tolerance": 0.1}

    def check(self, ctx: ProbeContext) -> Iterator[Finding]:
        precision = ctx.measurements.precision
        if precision is None:
            return
        dtype = precision.autocast_dtype
        tolerance = float(ctx.setting("amp-tolerance"))
        error = precision.autocast_error
        event = precision.divergence
        module = event.module if event is not None else None
        at = ctx.locate(event.module, event.site) if event is not None else ctx.output_node()
        first = ""
        if event is not None:
            owner = f" in `{event.module}`" if event.module else ""
            first = f"; the first op beyond it is {event.op}{owner}" + (f" ({event.value:.0%})" if event.value is not None and math.isfinite(event.value) else "")
        if precision.autocast_nonfinite:
            yield self.finding(f"the output under autocast({dtype}) is not finite while float32's is{first}", at=at, module=module)
        elif error is not None and error > tolerance:
            yield self.finding(
                f"the output under autocast({dtype}) differs from float32 by {error:.1%} (tolerance {tolerance:.0%}){first}",
                at=at, module=module,
            )
        if ctx.measurements.non_finite is not None:
            return  # float32 itself is not finite (GRD003): the mixed-precision steps cannot be either
        if precision.steps and not precision.finite:
            bad = next((i for i, v in enumerate(precision.losses) if not math.isfinite(v)), None)
            when = f" (loss {precision.losses[bad]} at step {bad + 1})" if bad is not None else " (weights became non-finite)"
            yield self.finding(
                f"{precision.steps} training steps with autocast({dtype}), GradScaler, unscale_ and clipping did not stay finite{when}",
                at=ctx.output_node(),
            )
        elif precision.steps and precision.skipped_steps == precision.steps:
            yield self.finding(
                f"GradScaler skipped all {precision.steps} training steps under autocast({dtype}): the gradients are inf/NaN at every loss scale tried",
                at=ctx.output_node(),
            )
