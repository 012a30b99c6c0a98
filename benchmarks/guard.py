"""What the guard on the user's code costs (auditor/guard.py): a ResNet-50 file audited as a whole file (import,
build, capture, rules) in a fresh process, with the guard's audit hook installed first and without it.

    python benchmarks/guard.py              # markdown table on stdout
    python benchmarks/guard.py --repeat 9

Each run is a process of its own that imports what the fork server preloads (torch, the auditor) and then times
`Engine.audit_models` on the file: the CPU time of exactly the part the guard watches. The two variants run
interleaved, so a busy machine slows them alike; the table shows medians. A busy machine's noise is larger than the
hook's cost, so that is also computed from its parts: how many audit events one run raises (every `open`,
`import`, `exec`, `id()` ... calls the hook) times what the hook adds to each, measured in a loop.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import models

ROOT = Path(__file__).resolve().parent.parent

RUN = """
import json, sys, time
from pathlib import Path
import auditor.worker  # what the fork server holds before any child starts
from auditor.engine import Engine
from auditor.guard import Guard
from auditor.options import Options
from auditor.rule import default_settings
from auditor.targets import Kind, Target

path, variant = Path(sys.argv[1]), sys.argv[2]
from auditor.guard import _HANDLERS
events = [0, 0]  # every event, the watched ones
if variant != "plain":
    Guard(path, writable=[path.parent]).install()
if variant == "count":  # a second hook: counted apart, not timed
    def count(event, args):
        events[0] += 1
        events[1] += event in _HANDLERS
    sys.addaudithook(count)
started, cpu = time.perf_counter(), time.process_time()
results = list(Engine(Options(settings=default_settings())).audit_models(Target(Kind.FILE, str(path), path=path)))
print(json.dumps({"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu, "events": events,
                  "statuses": [r.status for r in results]}))
"""

PER_EVENT = """
import sys, time
from pathlib import Path
import auditor.worker
from auditor.guard import Guard
if sys.argv[1] == "guard":
    Guard(Path("x.py"), writable=[]).install()
x, n = object(), 200_000
cpu = time.process_time()
for _ in range(n):
    id(x)  # an audit event the guard does not watch: its most common call
unwatched = (time.process_time() - cpu) / n
cpu = time.process_time()
for _ in range(n // 10):
    open(sys.executable, "rb").close()  # a watched one (a read: allowed)
print(unwatched, (time.process_time() - cpu) / (n // 10))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="auditor-bench-") as folder:
        path = Path(folder) / "resnet50.py"
        path.write_text("import torch.nn as nn\n\n\n" + inspect.getsource(models.Bottleneck) + "\n\n" + inspect.getsource(models.ResNet50))
        runs: dict[str, list[dict]] = {"without the guard": [], "with the guard": []}
        for _ in range(args.repeat):
            for name, variant in (("without the guard", "plain"), ("with the guard", "guard")):
                done = subprocess.run([sys.executable, "-c", RUN, str(path), variant], capture_output=True, text=True, cwd=ROOT, check=False)
                runs[name].append(_measured(done))
        events = _measured(subprocess.run([sys.executable, "-c", RUN, str(path), "count"], capture_output=True, text=True, cwd=ROOT, check=False))["events"]
    base = statistics.median(r["cpu"] for r in runs["without the guard"])
    print(f"ResNet-50 file: import, build, capture, rules; median of {args.repeat} runs each, interleaved\n")
    print("| variant | wall (s) | CPU (s) | CPU vs without |")
    print("| --- | --- | --- | --- |")
    for name, measured in runs.items():
        cpu = statistics.median(r["cpu"] for r in measured)
        print(f"| {name} | {statistics.median(r['wall'] for r in measured):.2f} | {cpu:.2f} | {cpu / base:.3f}x |")
    costs = {}
    for variant in ("plain", "guard"):
        done = subprocess.run([sys.executable, "-c", PER_EVENT, variant], capture_output=True, text=True, cwd=ROOT, check=True)
        costs[variant] = [float(v) for v in done.stdout.split()]
    unwatched, watched = (1e9 * (costs["guard"][i] - costs["plain"][i]) for i in range(2))
    total = ((events[0] - events[1]) * unwatched + events[1] * watched) / 1e6
    print(f"\nOne run raised {events[0]} audit events, {events[1]} of them of a kind the guard looks at (mostly files "
          f"opened for reading). The hook adds {unwatched:.0f} ns to an event it does not look at (`id()`) and "
          f"{watched:.0f} ns to a file opened for reading: about {total:.0f} ms per run.")


def _measured(done: subprocess.CompletedProcess[str]) -> dict:
    if done.returncode != 0:
        raise SystemExit(f"a benchmarked run failed:\n{done.stderr[-2000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if measured["statuses"] != ["ok"]:
        raise SystemExit(f"the model was not audited: {measured}")
    return measured


if __name__ == "__main__":
    main()
