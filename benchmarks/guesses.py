"""What guessing inputs costs: `audit FOLDER` on small models whose inputs are guessed, against the same models
with those inputs given (`[tool.auditor] targets` with each model's `input`, as a user who knew them would write).

    python benchmarks/guesses.py              # markdown table on stdout
    python benchmarks/guesses.py --repeat 7

The folder holds the canonical architectures and the guessing fixtures (diffusion U-Net and DiT, encoder-decoder,
Whisper-like encoder, GCN, PointNet, position tables, recurrent state). A first run records each model's guess
(JSON `capture.inputs`); models with an argument left at None, which --input cannot write, are left out of both
runs. The two variants run interleaved, so a busy machine slows them alike; the table shows median wall-clock
and CPU time of all the processes of a run (the fork server and its children included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from timing import Measured, measure

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "tests" / "fixtures" / "canonical", ROOT / "tests" / "fixtures" / "inputs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="auditor-guesses-"))
    try:
        models = folder / "models"
        models.mkdir()
        for source in SOURCES:
            for path in sorted(source.glob("*.py")):
                shutil.copy(path, models / f"{source.name}_{path.name}")
        first = measure([sys.executable, "-m", "auditor", str(models), "--format", "json", "-q", "--no-cache"], cwd=folder).audited()
        guessed = {r["target"]: [i["spec"] for i in r["capture"]["inputs"]]
                   for r in json.loads(first.stdout)["results"] if r["status"] == "ok" and r["capture"] and r["capture"]["inputs"]}
        kept = {target: specs for target, specs in guessed.items() if "None" not in specs}
        entries = "\n".join(f"  {{ target = {json.dumps(t)}, input = {json.dumps(s)} }}," for t, s in kept.items())
        (folder / "given.toml").write_text(f"[tool.auditor]\ntargets = [\n{entries}\n]\n")
        (folder / "guessed.toml").write_text("[tool.auditor]\ntargets = [\n" + "\n".join(f"  {{ target = {json.dumps(t)} }}," for t in kept) + "\n]\n")
        variants = {"inputs guessed": "guessed.toml", "inputs given": "given.toml"}
        times: dict[str, list[Measured]] = {}
        for _ in range(args.repeat):
            for variant, config in variants.items():
                command = [sys.executable, "-m", "auditor", "--config", str(folder / config), "--format", "json", "-q"]
                times.setdefault(variant, []).append(measure(command, cwd=folder).audited())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"| {len(kept)} small models | wall | CPU (all processes) |")
    print("| --- | --- | --- |")
    for variant in variants:
        wall = statistics.median(m.wall for m in times[variant])
        cpu = statistics.median(m.cpu for m in times[variant])
        print(f"| {variant} | {wall:.2f} s | {cpu:.2f} s |")


if __name__ == "__main__":
    main()
