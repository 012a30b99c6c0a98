"""What finding and feeding models costs, each in a fresh process, wall-clock from outside (median of --repeat).

    python benchmarks/discovery.py            # markdown tables on stdout
    python benchmarks/discovery.py --repeat 5 --skip-inference

1. A folder of 200 torch-free utility modules (a class, functions, a top-level print): `audit` on the folder and
   on the 200 files named one by one (as the pre-commit hook passes them), against parsing them in a bare
   Python and against `audit --version` (the command's start-up).
2. A CIFAR network that keeps its resolution (`models.py:cifar_wide`): `audit` with inferred inputs against
   `audit --input 2,3,32,32`.
3. The training-code source checks alone (what the pre-commit hook pays per training script), in this process:
   each script of tests/fixtures/training parsed and checked 20 times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from timing import measure

HERE = Path(__file__).parent
UTILITY = '''import json
import os


class Helper{index}:
    """A utility with no torch in sight."""

    def __init__(self, root="."):
        self.root = root

    def path(self, name):
        return os.path.join(self.root, name)


def dump(value):
    return json.dumps({{"value": value}})


print("imported")  # a plain module may run code on import: it must never be imported
'''
PARSE = "import ast, glob, sys; [ast.parse(open(p).read()) for p in glob.glob(sys.argv[1] + '/*.py')]"


def timed(command: list[str], repeat: int) -> float:
    """Median wall-clock seconds of `repeat` runs."""
    return statistics.median(measure(command).wall for _ in range(repeat))


def plain_files(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for index in range(200):
            path = Path(folder) / f"util_{index}.py"
            path.write_text(UTILITY.format(index=index))
            files.append(str(path))
        audit = [sys.executable, "-m", "auditor", "-q", "--no-cache"]
        rows = [
            ("parse the 200 files (bare Python)", timed([sys.executable, "-c", PARSE, folder], repeat)),
            ("`audit --version` (start-up)", timed([sys.executable, "-m", "auditor", "--version"], repeat)),
            ("`audit DIR`", timed([*audit, folder], repeat)),
            ("`audit FILE...` (200 names, as pre-commit)", timed([*audit, *files], repeat)),
        ]
    print("| 200 torch-free modules | wall |\n| --- | --- |")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} s |")


def inference(repeat: int) -> None:
    target = f"{HERE / 'models.py'}:cifar_wide"
    inferred = timed([sys.executable, "-m", "auditor", target, "-q", "--no-cache"], repeat)
    given = timed([sys.executable, "-m", "auditor", target, "-q", "--no-cache", "--input", "2,3,32,32"], repeat)
    print("\n| CIFAR network, 32x32 only | `--input 2,3,32,32` | inferred | ratio |\n| --- | --- | --- | --- |")
    print(f"| models.py:cifar_wide | {given:.2f} s | {inferred:.2f} s | {inferred / given:.1f}x |")


def source_checks(repeat: int) -> None:
    from auditor.options import Options
    from auditor.rule import default_settings
    from auditor.selection import Selection
    from auditor.source import check_source, parse

    scripts = sorted((HERE.parent / "tests" / "fixtures" / "training").glob("*.py"))
    texts = [(str(p), p.read_text()) for p in scripts] * 20
    options = Options(selection=Selection(select=["CLP001", "TRN001", "TRN002", "AMP003"]), settings=default_settings())

    def once() -> float:
        started = time.perf_counter()
        for path, text in texts:
            check_source(path, text, parse(path, text), options, [])
        return time.perf_counter() - started

    seconds = statistics.median(once() for _ in range(repeat))
    print("\n| training-code source checks | files | total | per file |\n| --- | --- | --- | --- |")
    print(f"| tests/fixtures/training x 20 | {len(texts)} | {seconds:.2f} s | {1000 * seconds / len(texts):.1f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args()
    plain_files(args.repeat)
    if not args.skip_inference:
        inference(args.repeat)
    source_checks(args.repeat)


if __name__ == "__main__":
    main()
