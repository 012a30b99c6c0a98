"""Time `audit --fix` against a plain `audit` of the same model, on residual networks of 10, 20 and 40 blocks
with one fix each (a dropout between the two convs of every block: DRO002, moved after the second BatchNorm).

    python benchmarks/fix_scaling.py              # markdown table on stdout
    python benchmarks/fix_scaling.py --repeat 5

Each run is the CLI end to end in a fresh process (import, build, capture, rules; with --fix also the fix passes,
writing, loading the written folder back and re-auditing it). The two commands run back to back, alternating, so
a busy machine slows both alike; the ratio is the median of the per-pair ratios. `--fix` must stay linear in the
number of fixes: the 40-block ratio is meant to stay within 3x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
DEPTHS = (10, 20, 40)
INPUT = "2,3,32,32"


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return elapsed, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for depth in DEPTHS:
            target = f"{HERE / 'models.py'}:dropout_resnet_{depth}"
            audit_cmd = [sys.executable, "-m", "auditor", target, "-i", INPUT, "-q"]
            plain, fixing, ratios, fixes = [], [], [], 0
            for attempt in range(args.repeat):
                out = Path(scratch) / f"fixed-{depth}-{attempt}"
                seconds, _ = timed(audit_cmd)
                fix_seconds, stdout = timed([*audit_cmd, "--fix", "--out", str(out), "--format", "json"])
                (result,) = json.loads(stdout)["results"]
                if result["status"] != "ok" or result["findings"]:
                    raise SystemExit(f"--fix did not fix {target}: {result.get('error') or result['findings']}")
                fixes = len(result["fixes"])
                plain.append(seconds)
                fixing.append(fix_seconds)
                ratios.append(fix_seconds / seconds)
            rows.append((depth, fixes, statistics.median(plain), statistics.median(fixing), statistics.median(ratios)))
    print(f"| residual blocks | fixes | `audit` | `audit --fix` | ratio |  (input {INPUT}, median of {args.repeat})")
    print("| --- | --- | --- | --- | --- |")
    for depth, fixes, plain_s, fix_s, ratio in rows:
        print(f"| {depth} | {fixes} | {plain_s:.2f} s | {fix_s:.2f} s | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
