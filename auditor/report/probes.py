"""The text view of `--probe` numbers: a compact table with a sparkline per quantity along the depth, so a
person sees where a model blows up, then one line each for mixed precision and clipping.

Reads the JSON-able `result.probes` record (no torch), the same numbers `--format json` prints.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.text import Text

BARS = "▁▂▃▄▅▆▇█"
WIDTH = 48  # longest sparkline; deeper models are averaged into this many buckets
MIN_DECADES = 2.0  # a profile spanning less than this is drawn flat-ish, not stretched to full height

ROWS = (
    ("gradient", "in_grad_norm", "norm of the gradient flowing back through each weight layer's input"),
    ("weight grad", "grad_norm", "norm of each weight layer's own gradient"),
    ("activation", "in_std", "std of the signal each weight layer reads"),
)


def print_probes(probes: dict[str, Any], console: Console) -> None:
    if probes.get("skipped"):
        line = Text("  probe ", style="bold")
        line.append(f"skipped: {probes['skipped']}", style="dim")
        console.print(line)
        return
    layers = probes.get("layers") or []
    mode = probes.get("mode", "train")
    head = Text("  probe ", style="bold")
    head.append(
        f"{probes.get('device', '?')}, {mode} mode, {probes.get('loss') or '?'} loss, {_count(probes.get('passes', 0), 'pass', 'passes')}, "
        f"{len(layers)} weight layers, {probes.get('seconds', 0):.2f} s",
        style="dim",
    )
    if probes.get("step_seconds"):
        head.append(f" (one forward+backward {probes['step_seconds']:.3f} s)", style="dim")
    console.print(head)
    rows = []
    for title, key, _ in ROWS:
        values = [_number(layer.get(key)) for layer in layers]
        if all(v is None for v in values):
            continue
        finite = [(v, layer["module"]) for v, layer in zip(values, layers) if v is not None and math.isfinite(v) and v > 0]
        span = f"{_fmt(min(finite)[0])} `{min(finite)[1]}` .. {_fmt(max(finite)[0])} `{max(finite)[1]}`" if finite else "not finite"
        rows.append((title, sparkline(values), span))
    if rows:
        width = max(len(spark) for _, spark, _ in rows)
        console.print(Text(f"    {'by depth':<12} {'input -> output':<{width}}  min .. max", style="dim"))
        for title, spark, span in rows:
            line = Text(f"    {title:<12} ")
            line.append(f"{spark:<{width}}", style="bold")
            line.append(f"  {span}")
            console.print(line)
    for line in _summary_lines(probes):
        console.print(Text(f"    {line}", style="dim"))


def sparkline(values: list[float | None], width: int = WIDTH) -> str:
    """One character per layer (or per bucket of layers), log scale; ' ' where nothing was measured, '!' where
    the value was NaN or Inf."""
    buckets = _buckets(values, width)
    logs = [math.log10(v) for v in buckets if isinstance(v, float) and math.isfinite(v) and v > 0]
    if not logs:
        return "".join("!" if v == "bad" else " " for v in buckets)
    low, high = min(logs), max(logs)
    span = max(high - low, MIN_DECADES)
    base = low - (span - (high - low)) / 2
    chars = []
    for v in buckets:
        if v == "bad":
            chars.append("!")
        elif not isinstance(v, float) or not (math.isfinite(v) and v > 0):
            chars.append(" ")
        else:
            index = int((math.log10(v) - base) / span * (len(BARS) - 1) + 0.5)
            chars.append(BARS[max(0, min(len(BARS) - 1, index))])
    return "".join(chars)


def _buckets(values: list[float | None], width: int) -> list[Any]:
    """Values grouped into at most `width` buckets (geometric mean); a bucket with a non-finite value is 'bad'."""
    if len(values) <= width:
        return [("bad" if v is not None and not math.isfinite(v) else v) for v in values]
    out: list[Any] = []
    for index in range(width):
        chunk = values[index * len(values) // width:(index + 1) * len(values) // width]
        if any(v is not None and not math.isfinite(v) for v in chunk):
            out.append("bad")
            continue
        positive = [v for v in chunk if v is not None and v > 0]
        out.append(math.exp(sum(math.log(v) for v in positive) / len(positive)) if positive else None)
    return out


def _summary_lines(probes: dict[str, Any]) -> list[str]:
    lines = []
    bad = probes.get("non_finite")
    if bad:
        where = f" at {bad['file']}:{bad['line']}" if bad.get("file") else ""
        owner = f" in `{bad['module']}`" if bad.get("module") else ""
        lines.append(f"non-finite {bad.get('where') or 'values'}: first {bad['op']}{owner} ({bad['phase']}){where}")
    precision = probes.get("precision")
    if precision:
        limit = _fmt(_number(precision.get("float16_max")))
        peak = _number(precision.get("max_abs"))
        text = f"float32 max |x| {_fmt(peak)}"
        if precision.get("max_abs_module") is not None:
            text += f" in `{precision['max_abs_module'] or '<root>'}`"
        text += f" (float16 max {limit}"
        text += f"; {precision['overflow_ops']} ops above)" if precision.get("overflow_ops") else ")"
        error = _number(precision.get("autocast_error"))
        if error is not None:
            text += f"; autocast {precision['autocast_dtype']} vs float32 {error:.2%}" if math.isfinite(error) else f"; autocast {precision['autocast_dtype']} output not finite"
        if precision.get("train_steps"):
            state = "finite" if precision.get("finite") else "NOT finite"
            skipped = precision.get("skipped_steps") or 0
            text += f"; {_count(precision['train_steps'], 'AMP step', 'AMP steps')} {state}" + (f", {skipped} skipped by GradScaler" if skipped else "")
        lines.append(text)
    clipping = probes.get("clipping")
    if clipping and clipping.get("norms"):
        norms = [_number(v) for v in clipping["norms"]]
        finite = [v for v in norms if v is not None and math.isfinite(v)]
        text = f"gradient norm per step {_fmt(min(finite))}-{_fmt(max(finite))}" if finite else "gradient norms not finite"
        if clipping.get("threshold") is not None:
            text += f"; clip threshold {_fmt(clipping['threshold'])} clipped {clipping['clipped']}/{clipping['steps']} steps"
        if clipping.get("recommended") is not None:
            text += f"; suggested clip-norm {_fmt(_number(clipping['recommended']))}"
        lines.append(text)
    return lines


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


def _number(value: Any) -> float | None:
    """JSON numbers, with the "inf"/"nan" strings the JSON uses for non-finite values."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if value in ("inf", "-inf", "nan"):
        return float(value)
    return None


def _first(values: list[float | None]) -> float | None:
    return next((v for v in values if v is not None), None)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if 0.001 <= abs(value) < 10000 else f"{value:.2e}"
