"""What process isolation costs: `audit` (one child process per target, forked from a server that imported torch
once) against the same targets audited in one process, as the tool did before isolation.

    python benchmarks/isolation.py              # markdown table on stdout
    python benchmarks/isolation.py --repeat 7

"one process" runs `Engine.run` over the targets and renders JSON in a single fresh process: what the command
did before, and the floor a persistent worker process (one for all targets, restarted when one dies) could
reach. The variants run interleaved, so a busy machine slows them alike; the table shows the median wall-clock
time of each, from outside the process, and the median CPU time of all its processes (the fork server and its
children included: this process is made their subreaper on Linux), which a busy machine disturbs less.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from timing import Measured, measure

ROOT = Path(__file__).resolve().parent.parent
SMALL_MODELS = 20  # files copied from the rule fixtures

ONE_PROCESS = """
import sys
from auditor.engine import Engine
from auditor.findings import Report
from auditor.options import Options
from auditor.report import renderer
from auditor.rule import default_settings
from auditor.targets import parse_target
targets = [t for text in sys.argv[1:] for t in parse_target(text)]
report = Report(Engine(Options(settings=default_settings())).run(targets))
sys.stdout.write(renderer("json")(report))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="auditor-bench-"))
    try:
        for path in sorted((ROOT / "tests" / "fixtures" / "rules").glob("*.py"))[:SMALL_MODELS]:
            shutil.copy(path, folder / path.name)
        cases = {"`audit examples/` (2 files, 1 model)": "examples", f"{SMALL_MODELS} small model files": str(folder)}
        variants = {
            "one process (before)": lambda target: [sys.executable, "-c", ONE_PROCESS, target],
            "`audit` (a child per target)": lambda target: [sys.executable, "-m", "auditor", target, "-q", "--format", "json"],
            "`audit --jobs 2`": lambda target: [sys.executable, "-m", "auditor", target, "-q", "--format", "json", "--jobs", "2"],
        }
        times: dict[tuple[str, str], list[Measured]] = {}
        for _ in range(args.repeat):
            for case, target in cases.items():
                for variant, command in variants.items():
                    times.setdefault((case, variant), []).append(measure(command(target), cwd=ROOT))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("| targets | " + " | ".join(variants) + " |")
    print("| --- |" + " --- |" * len(variants))
    for case in cases:
        cells = []
        for variant in variants:
            wall = statistics.median(m.wall for m in times[(case, variant)])
            cpu = statistics.median(m.cpu for m in times[(case, variant)])
            cells.append(f"{wall:.2f} s, CPU {cpu:.2f} s")
        print(f"| {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
