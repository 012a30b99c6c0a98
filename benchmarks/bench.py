"""Time `audit` against what it costs just to build the model and run it once, each in a fresh process.

    python benchmarks/bench.py            # markdown table on stdout
    python benchmarks/bench.py --repeat 5

"plain" is a process that imports torch, builds the model and runs one eval forward pass (what any use of the
model pays); "forward" is that pass alone; "audit" and "audit --probe" are the CLI end to end. Process times are
wall clock from outside the process and CPU time (user + system) of every process it started (benchmarks/timing.py),
the steadier figure on a busy machine. Every process runs with one torch thread (OMP_NUM_THREADS=1 unless set): on
a shared machine a second thread mostly waits for the first at each op (a ResNet-50 training step took 6.1 s with
two threads against 0.74 s with one, under load 3), which says nothing about the audit. The in-process columns
split one audit into capture (trace + shape pass) and the graph rules, and compare the probes (`run_probes`) with
one plain training step (forward + backward in training mode, warm).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from timing import measure

HERE = Path(__file__).parent
CASES = {
    "ResNet-50 (2x3x224x224)": ("resnet50", "2,3,224,224"),
    "Transformer 6x512 (long:2,128)": ("transformer", "long:2,128"),
}

PLAIN = """
import sys, time, json
started = time.perf_counter()
import torch
sys.path.insert(0, {here!r})
import models
from auditor.loading.inputs import make_inputs
from auditor.specs import parse_spec
model = getattr(models, {name!r})().eval()
inputs = make_inputs([parse_spec({spec!r})], model)
forward_started = time.perf_counter()
with torch.no_grad():
    model(*inputs)
done = time.perf_counter()
print(json.dumps({{"total": done - started, "forward": done - forward_started}}))
"""

PHASES = """
import sys, time, json
sys.path.insert(0, {here!r})
from auditor.engine import run_graph_rules
from auditor.loading.models import ModelLoader
from auditor.prepare import capture_model
from auditor.options import Options
from auditor.rule import default_settings
from auditor.targets import parse_target
[target] = parse_target({target!r})
[loaded] = ModelLoader().load(target)
started = time.perf_counter()
graph, inputs = capture_model(loaded, [{spec!r}], ("fx", "export", "hooks"))
captured = time.perf_counter()
run_graph_rules(graph, Options(settings=default_settings()), [])
ruled = time.perf_counter()
import torch
from auditor.probes import run_probes
model = loaded.model.train()
steps = []
for _ in range(3):  # one plain training step (forward + backward), warm, best of 3
    step_started = time.perf_counter()
    model(*inputs).float().logsumexp(-1).sum().backward()
    steps.append(time.perf_counter() - step_started)
model.zero_grad(set_to_none=True)
probe_started = time.perf_counter()
run_probes(model, inputs, graph, default_settings())
probed = time.perf_counter()
print(json.dumps({{"capture": captured - started, "rules": ruled - captured, "method": graph.method, "nodes": len(graph),
                  "probe": probed - probe_started, "step": min(steps)}}))
"""


def python_json(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for label, (name, spec) in CASES.items():
        target = f"{HERE / 'models.py'}:{name}"
        plain_code = PLAIN.format(here=str(HERE), name=name, spec=spec)
        plain = [python_json(plain_code) for _ in range(args.repeat)]
        runs = {
            "plain": [sys.executable, "-c", plain_code],
            "audit": [sys.executable, "-m", "auditor", target, "-i", spec, "-q", "--no-cache"],
            "probe": [sys.executable, "-m", "auditor", target, "-i", spec, "-q", "--probe", "--no-cache"],
        }
        timed = {name: [measure(command) for _ in range(args.repeat)] for name, command in runs.items()}
        wall = {name: statistics.median(m.wall for m in measured) for name, measured in timed.items()}
        cpu = {name: statistics.median(m.cpu for m in measured) for name, measured in timed.items()}
        phases = [python_json(PHASES.format(here=str(HERE), target=target, spec=spec)) for _ in range(args.repeat)]
        rows.append((
            label, wall, cpu,
            statistics.median(p["forward"] for p in plain),
            statistics.median(p["capture"] for p in phases),
            statistics.median(p["rules"] for p in phases),
            f"{phases[0]['method']}, {phases[0]['nodes']} nodes",
            statistics.median(p["probe"] for p in phases),
            statistics.median(p["step"] for p in phases),
        ))
    print("| model | plain: import+build+forward | forward alone | `audit` | `audit --probe` | capture | rules | graph | probes | one training step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, wall, cpu, forward, capture, rules, graph, probes, step in rows:
        timings = {
            name: f"{wall[name]:.2f} s, CPU {cpu[name]:.2f} s" + ("" if name == "plain" else f" ({wall[name] / wall['plain']:.1f}x, CPU {cpu[name] / cpu['plain']:.1f}x)")
            for name in wall
        }
        print(
            f"| {label} | {timings['plain']} | {forward:.2f} s | {timings['audit']} | {timings['probe']} | {capture:.2f} s | "
            f"{rules * 1000:.0f} ms | {graph} | {probes:.2f} s ({probes / step:.1f} steps) | {step:.2f} s |"
        )

if __name__ == "__main__":
    main()
