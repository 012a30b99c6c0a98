"""What a plain `audit` (no probes) costs on models torch.fx cannot trace, against a plain process that imports
torch and the model's library, builds the model and runs one eval forward pass.

    python benchmarks/capture_cost.py --threads 1                 # every model, 3 pairs each, markdown table
    python benchmarks/capture_cost.py --only bert gpt2 --repeat 5
    python benchmarks/capture_cost.py --with-export               # also `audit --capture export`, side by side

Such models are captured by one watched eager forward pass (the hooks capture); `--with-export` also times the
torch.export capture they had before, which traces every op on fake tensors. Opt-in: needs the zoo extras
(transformers, timm, torchvision; diffusers for the U-Net); weights are never downloaded. Pairs alternate and
ratios are medians of the pairs' ratios, CPU time over every process of a run, as in `probe_cost.py`, whose
`compare` this uses. The capture column says which capture the audit used.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from probe_cost import available, compare

HERE = Path(__file__).parent
ZOO = HERE / "zoo_models.py"
CASES = {  # name: (label, target, kwargs, inputs: one spec per forward argument)
    "bert": ("BERT-base", f"{ZOO}:bert_base", {}, "long:1,128"),
    "gpt2": ("GPT-2 (124M)", f"{ZOO}:gpt2", {}, "long:1,128"),
    "t5": ("T5-small encoder", f"{ZOO}:t5_small_encoder", {}, "long:1,128"),
    "swin_hf": ("Swin-T (transformers)", f"{ZOO}:swin_tiny", {}, "1,3,224,224"),
    "swin_t": ("Swin-T (torchvision)", "torchvision.models:swin_t", {"weights": None}, "1,3,224,224"),
    "tiny_vit": ("TinyViT-5M (timm)", "timm:create_model", {"model_name": "tiny_vit_5m_224", "pretrained": False}, "1,3,224,224"),
    "unet": ("Diffusion U-Net, 425M (diffusers)", f"{ZOO}:diffusion_unet", {}, "1,4,32,32 long:1 1,77,768"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both processes (OMP_NUM_THREADS)")
    parser.add_argument("--with-export", action="store_true", help="also time `audit --capture export`")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    names = [n for n in (args.only or CASES) if available(CASES[n][1])]
    variants = [()] + ([("--capture", "export")] if args.with_export else [])
    load_before = os.getloadavg()
    rows = [compare(CASES[name], args.repeat, probe=False, options=options) for name in names for options in variants]
    load_after = os.getloadavg()
    print(f"torch threads: {args.threads or 'torch default'}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)\n")
    print("| model | input | capture | plain: import+build+forward | `audit` | ratio, CPU time (min-max) | ratio, wall clock (min-max) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['label']} | `{row['input']}` | {row['method']} | {row['plain_cpu']:.1f} s CPU, {row['plain']:.1f} s wall | "
            f"{row['audit_cpu']:.1f} s CPU, {row['audit']:.1f} s wall | {row['cpu_ratio']:.1f}x ({row['cpu_spread'][0]:.1f}-{row['cpu_spread'][1]:.1f}) | "
            f"{row['wall_ratio']:.1f}x ({row['wall_spread'][0]:.1f}-{row['wall_spread'][1]:.1f}) |"
        )


if __name__ == "__main__":
    main()
