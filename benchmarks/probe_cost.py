"""What `audit --probe` costs against a plain process that builds the same model and trains it one step.

    python benchmarks/probe_cost.py                 # every model, 3 pairs each, markdown table on stdout
    python benchmarks/probe_cost.py --repeat 5 --only vgg16_bn bert
    python benchmarks/probe_cost.py --only cifar_resnet20 conv1d_resnet20 --without-bf16-instructions

Opt-in: needs the zoo extras (`pip install -e .[zoo]`: torchvision, timm, transformers); models whose library is
missing are left out. Weights are never downloaded (`weights=None`, `pretrained=False`, configs' defaults).

"plain" is a fresh process that imports torch and the model's library, builds the model and runs one forward
and backward pass in training mode on the input (what one training step pays, the optimizer aside); "audit
--probe" is the CLI end to end
(`audit TARGET --kwargs ... --input ... --probe`). The two run back to back, alternating, `--repeat` times;
each ratio is the median of the pairs' ratios, so that a load change on a shared machine hits both sides of a
pair. Both CPU time (user + system of the child) and wall clock are reported: on a busy machine a process waits
for a core and its wall clock says more about the neighbours than about the process, while with one thread
(`--threads 1`) its CPU time is what it would take on a quiet machine. "probes alone" is the time `run_probes`
reported inside the audit (JSON `probes.seconds`, wall clock). The load average before and after is printed.

`--without-bf16-instructions` runs both processes as on a CPU without bfloat16 instructions (oneDNN and ATen
limited to AVX2: `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`), where PyTorch emulates bfloat16
convolutions and matrix products at 10-30x a float32 kernel: the case the probes' reduced-precision step must
not pay for (`auditor/probes/reduced.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from timing import measure

HERE = Path(__file__).parent
NO_WEIGHTS = {"weights": None}
MODELS = HERE / "models.py"
CASES = {  # name: (label, target, kwargs, input)
    "cifar_resnet20": ("ResNet-20 (CIFAR)", f"{MODELS}:cifar_resnet20", {}, "8,3,32,32"),
    "conv1d_resnet20": ("ResNet-20, Conv1d (signals)", f"{MODELS}:conv1d_resnet20", {}, "8,1,4096"),
    "vgg16_bn": ("VGG16-BN", "torchvision.models:vgg16_bn", NO_WEIGHTS, "1,3,224,224"),
    "vgg11": ("VGG11", "torchvision.models:vgg11", NO_WEIGHTS, "1,3,224,224"),
    "vit_b_16": ("ViT-B/16", "torchvision.models:vit_b_16", NO_WEIGHTS, "1,3,224,224"),
    "fcn_resnet50": ("FCN-ResNet50", "torchvision.models.segmentation:fcn_resnet50", {"weights": None, "weights_backbone": None}, "1,3,224,224"),
    "resnet50": ("ResNet-50", "torchvision.models:resnet50", NO_WEIGHTS, "1,3,224,224"),
    "repvgg": ("RepVGG-A2 (timm)", "timm:create_model", {"model_name": "repvgg_a2", "pretrained": False}, "1,3,224,224"),
    "bert": ("BERT-base", f"{HERE / 'zoo_models.py'}:bert_base", {}, "long:1,128"),
    "bert_512": ("BERT-base, 512 tokens", f"{HERE / 'zoo_models.py'}:bert_base", {}, "long:1,512"),
    "gpt2": ("GPT-2 (124M)", f"{HERE / 'zoo_models.py'}:gpt2", {}, "long:1,128"),
    "swin_hf": ("Swin-T (transformers)", f"{HERE / 'zoo_models.py'}:swin_tiny", {}, "1,3,224,224"),
}
LIBRARY = {"torchvision": "torchvision", "timm": "timm", "diffusion_unet": "diffusers", "zoo_models.py": "transformers"}
WITHOUT_BF16 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}

PLAIN = """
import importlib, importlib.util, json, sys
import torch
from auditor.loading.inputs import make_inputs
from auditor.probes.surrogate import primary_output
from auditor.specs import parse_spec
where, name = {target!r}.rsplit(":", 1)
if where.endswith(".py"):
    spec = importlib.util.spec_from_file_location("bench_models", where)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
else:
    module = importlib.import_module(where)
model = getattr(module, name)(**{kwargs!r})
inputs = make_inputs([parse_spec(s) for s in {spec!r}.split()], model)
{run}
"""
TRAINING_STEP = "primary_output(model.train()(*inputs)).float().square().mean().backward()"
FORWARD = "with torch.no_grad():\n    model.eval()(*inputs)"


def compare(case: tuple[str, str, dict, str], repeat: int, env: dict[str, str] | None = None, *, probe: bool = True,
            options: tuple[str, ...] = ()) -> dict:
    """`audit` (with `--probe`: against a training step; without: against an eval forward) and the plain
    process, in alternating pairs; medians and ratios, the probes' own time, the capture method used. `spec`
    holds one input spec per forward argument, space-separated; `options` go to `audit` as they are."""
    label, target, kwargs, spec = case
    plain_command = [sys.executable, "-c", PLAIN.format(target=target, kwargs=kwargs, spec=spec, run=TRAINING_STEP if probe else FORWARD)]
    audit_command = [sys.executable, "-m", "auditor", target, *(a for s in spec.split() for a in ("--input", s))]
    audit_command += ["--format", "json", "--device", "cpu", "--no-cache", *options]
    audit_command += ["--probe"] if probe else []
    if kwargs:
        audit_command += ["--kwargs", json.dumps(kwargs)]
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}  # is-audit -> (wall, cpu) per pair
    probes, methods = [], set()
    for index in range(repeat):
        order = [plain_command, audit_command] if index % 2 == 0 else [audit_command, plain_command]
        for command in order:
            measured = measure(command, env=env).audited()
            runs[command is audit_command].append((measured.wall, measured.cpu))
            if command is audit_command:
                [result] = [r for r in json.loads(measured.stdout)["results"] if r.get("capture")]
                methods.add(result["capture"]["method"])
                probes.append(result["probes"]["seconds"] if probe else 0.0)
    pairs = list(zip(runs[False], runs[True]))
    wall_ratios = [audit[0] / plain[0] for plain, audit in pairs]
    cpu_ratios = [audit[1] / plain[1] for plain, audit in pairs]
    return {
        "label": label, "input": spec, "probes": statistics.median(probes), "method": "/".join(sorted(methods)),
        "plain": statistics.median(w for w, _ in runs[False]), "audit": statistics.median(w for w, _ in runs[True]),
        "plain_cpu": statistics.median(c for _, c in runs[False]), "audit_cpu": statistics.median(c for _, c in runs[True]),
        "wall_ratio": statistics.median(wall_ratios), "wall_spread": (min(wall_ratios), max(wall_ratios)),
        "cpu_ratio": statistics.median(cpu_ratios), "cpu_spread": (min(cpu_ratios), max(cpu_ratios)),
    }


def available(target: str) -> bool:
    import importlib.util

    library = next((lib for key, lib in LIBRARY.items() if key in target), None)
    return library is None or importlib.util.find_spec(library) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both processes (OMP_NUM_THREADS); default: torch's own")
    parser.add_argument("--without-bf16-instructions", action="store_true", help="both processes as on a CPU without bfloat16 instructions")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    env = {**os.environ, **WITHOUT_BF16} if args.without_bf16_instructions else None
    names = [n for n in (args.only or CASES) if available(CASES[n][1])]
    load_before = os.getloadavg()
    rows = [compare(CASES[name], args.repeat, env) for name in names]
    load_after = os.getloadavg()
    threads = args.threads or f"torch's default ({os.cpu_count()} cores)"
    cpu = "; as without bfloat16 instructions (AVX2)" if args.without_bf16_instructions else ""
    print(f"torch threads: {threads}{cpu}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)\n")
    print("| model | input | plain: import+build+forward+backward | `audit --probe` | ratio, CPU time (min-max) | ratio, wall clock (min-max) | probes alone |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['label']} | `{row['input']}` | {row['plain_cpu']:.1f} s CPU, {row['plain']:.1f} s wall | "
            f"{row['audit_cpu']:.1f} s CPU, {row['audit']:.1f} s wall | {row['cpu_ratio']:.1f}x ({row['cpu_spread'][0]:.1f}-{row['cpu_spread'][1]:.1f}) | "
            f"{row['wall_ratio']:.1f}x ({row['wall_spread'][0]:.1f}-{row['wall_spread'][1]:.1f}) | {row['probes']:.1f} s |"
        )

if __name__ == "__main__":
    main()
