"""Should the init record serve models built with real weights too? Measured per model, in one process:

    python benchmarks/init_record.py            # torch only: ResNet-50, a 6x512 transformer
    python benchmarks/init_record.py --zoo      # also torchvision's ViT-B/16 and Hugging Face's BERT-base

- "read values": what the init rules pay on a real build to read every weight they judge (`Measured`: the std of
  a sample, the symmetry checks' early exits);
- "record": what recording the init calls adds to a build (a meta build with the recorder, minus one under
  `torch.device("meta")`: the recorder's cost is the same on a real build, which also pays for the init itself);
- "read record": the same questions answered from the record;
- "largest gap": the largest relative difference between a weight's recorded and measured std.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))

from auditor.graph.inits import Measured  # noqa: E402
from auditor.loading.inits import InitRecorder  # noqa: E402

TOLERANCE = 1e-3


def _judged(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() >= 2 and p.requires_grad]


def _ask(init) -> float:
    std, _ = init.std_mean()
    init.constant(TOLERANCE)
    init.identical_units(TOLERANCE)
    return std


def measure(build: Callable[[], nn.Module]) -> dict[str, float]:
    torch.manual_seed(0)
    real = build()
    started = time.perf_counter()
    measured = [_ask(Measured(w)) for w in _judged(real)]
    read_values = time.perf_counter() - started

    started = time.perf_counter()
    with torch.device("meta"):
        build()
    plain = time.perf_counter() - started
    started = time.perf_counter()
    recorder = InitRecorder()
    with recorder.recording():
        meta = build()
    record = recorder.record(meta)
    recording = time.perf_counter() - started - plain

    started = time.perf_counter()
    inits = [record.init_of(w) for w in _judged(meta)]
    recorded = [_ask(i) if i is not None else float("nan") for i in inits]
    read_record = time.perf_counter() - started
    gaps = [abs(r / m - 1) for r, m in zip(recorded, measured) if m > 0]
    return {
        "weights": len(measured), "read_values": read_values, "record": recording, "read_record": read_record,
        "gap": max(gaps, default=0.0), "unknown": sum(i is None for i in inits),
    }


def cases(zoo: bool) -> dict[str, Callable[[], nn.Module]]:
    import models

    found: dict[str, Callable[[], nn.Module]] = {"ResNet-50": models.resnet50, "Transformer 6x512": models.transformer}
    if zoo:
        import torchvision
        import transformers

        found["torchvision ViT-B/16"] = lambda: torchvision.models.vit_b_16(weights=None)
        found["HF BERT-base"] = lambda: transformers.BertModel(transformers.BertConfig())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", action="store_true", help="also torchvision and transformers models")
    args = parser.parse_args()
    print("| model | weights judged | read values | record (added to a build) | read record | largest std gap | unknown |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, build in cases(args.zoo).items():
        m = measure(build)
        print(f"| {label} | {m['weights']} | {m['read_values'] * 1000:.0f} ms | {m['record'] * 1000:.0f} ms | "
              f"{m['read_record'] * 1000:.0f} ms | {m['gap']:.1%} | {m['unknown']} |")


if __name__ == "__main__":
    main()
