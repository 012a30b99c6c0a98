"""Time `audit --fix` against a plain `audit` of the same model, on residual networks of 10, 20 and 40 blocks
with one fix each (a dropout between the two convs of every block: DRO002, moved after the second BatchNorm).

    python benchmarks/fix_scaling.py              # markdown table on stdout
    python benchmarks/fix_scaling.py --repeat 5

Each run is the CLI end to end in a fresh process (import, build, capture, rules; with --fix also the fix passes,
writing, loading the written folder back and re-auditing it), timed as wall-clock and as the CPU time of every
process it started (user + system: steadier than wall-clock on a shared machine), each with one torch thread
(OMP_NUM_THREADS=1 unless set: a second thread's spinning on a busy machine is noise). The two commands run back to back,
alternating, so a busy machine slows both alike; each ratio is the median of the per-pair ratios. `--fix` must
stay linear in the number of fixes: the 40-block ratio is meant to stay within 3x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from timing import measure

HERE = Path(__file__).parent
DEPTHS = (10, 20, 40)
INPUT = "2,3,32,32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for depth in DEPTHS:
            target = f"{HERE / 'models.py'}:dropout_resnet_{depth}"
            audit_cmd = [sys.executable, "-m", "auditor", target, "-i", INPUT, "-q", "--no-cache"]
            runs: list[tuple[float, float, float, float]] = []
            fixes = 0
            for attempt in range(args.repeat):
                out = Path(scratch) / f"fixed-{depth}-{attempt}"
                audit, fix = measure(audit_cmd), measure([*audit_cmd, "--fix", "--out", str(out), "--format", "json"]).audited()
                (result,) = json.loads(fix.stdout)["results"]
                if result["status"] != "ok" or result["findings"]:
                    raise SystemExit(f"--fix did not fix {target}: {result.get('error') or result['findings']}")
                fixes = len(result["fixes"])
                runs.append((audit.wall, fix.wall, audit.cpu, fix.cpu))
            median = [statistics.median(r[i] for r in runs) for i in range(4)]
            ratios = [statistics.median(r[1] / r[0] for r in runs), statistics.median(r[3] / r[2] for r in runs)]
            rows.append((depth, fixes, *median, *ratios))
    print(f"Input {INPUT}, median of {args.repeat} back-to-back pairs.\n")
    print("| residual blocks | fixes | `audit` wall / CPU | `audit --fix` wall / CPU | ratio wall / CPU |")
    print("| --- | --- | --- | --- | --- |")
    for depth, fixes, wall, fix_wall, cpu, fix_cpu, wall_ratio, cpu_ratio in rows:
        print(f"| {depth} | {fixes} | {wall:.2f} s / {cpu:.2f} s | {fix_wall:.2f} s / {fix_cpu:.2f} s | "
              f"{wall_ratio:.2f}x / {cpu_ratio:.2f}x |")


if __name__ == "__main__":
    main()
