"""Gradient clipping: how often a threshold clips over the probe's training steps, and a threshold to suggest.

The suggestion is twice the median total norm seen (rounded to one significant figure): above the typical
step, so that clipping catches spikes instead of normalizing every step.
"""

from __future__ import annotations

import math
import statistics

from auditor.probes.measurements import Clipping


def summarize(norms: list[float], threshold: float | None) -> Clipping:
    finite = [n for n in norms if math.isfinite(n)]
    clipping = Clipping(threshold=threshold, norms=finite)
    if threshold is not None:
        clipping.clipped = sum(1 for n in finite if n > threshold)
    if finite:
        clipping.recommended = round_significant(2 * statistics.median(finite))
    return clipping


def round_significant(value: float, digits: int = 1) -> float:
    if value <= 0 or not math.isfinite(value):
        return value
    exponent = math.floor(math.log10(value)) - digits + 1
    return round(round(value / 10**exponent) * 10**exponent, max(0, -exponent))
