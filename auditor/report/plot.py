"""`--plot FILE.png`: the probe's per-layer chart as a picture (matplotlib, the optional `plot` extra).

One row per probed model: on the left the gradient by depth (the norm flowing back through each weight layer's
input, and each layer's weight-gradient norm), on the right the activation scale by depth (the std each layer
reads and produces). Log scale: explosion and vanishing are straight lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auditor.findings import Report


def write_chart(report: Report, path: Path) -> bool:
    """Write the chart; False when no result has probe layers to draw."""
    results = [r for r in report.results if r.probes.get("layers")]
    if not results:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 2, figsize=(12, 3.6 * len(results)), squeeze=False)
    for row, result in zip(axes, results):
        layers: list[dict[str, Any]] = result.probes["layers"]
        depth = list(range(len(layers)))
        _series(row[0], depth, layers, [("in_grad_norm", "gradient norm at the layer's input"), ("grad_norm", "weight gradient norm")])
        _series(row[1], depth, layers, [("in_std", "std of the layer's input"), ("act_std", "std of the layer's output")])
        row[0].set_title(f"{result.target}: gradients by depth", fontsize=10)
        row[1].set_title(f"{result.target}: activations by depth", fontsize=10)
        ticks = depth if len(depth) <= 24 else depth[:: max(1, len(depth) // 24)]
        for axis in row:
            axis.set_xticks(ticks)
            axis.set_xticklabels([layers[i]["module"] for i in ticks], rotation=60, ha="right", fontsize=7)
            axis.set_yscale("log")
            axis.grid(True, which="major", alpha=0.3)
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _series(axis: Any, depth: list[int], layers: list[dict[str, Any]], keys: list[tuple[str, str]]) -> None:
    for key, label in keys:
        points = [(i, layer[key]) for i, layer in zip(depth, layers) if isinstance(layer.get(key), (int, float)) and layer[key] > 0]
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
