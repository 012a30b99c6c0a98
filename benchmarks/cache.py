"""What the result cache saves: `audit DIR` on a project of 30 small model files, cold (empty cache), warm (every
target answered from it), after one file's edit, after an edit to a module that several models import, and with
`--no-cache`, each run a fresh process (median of --repeat).

    python benchmarks/cache.py              # markdown table on stdout
    python benchmarks/cache.py --repeat 5

The models are small CNNs and MLPs of the kind the rule fixtures hold (some with findings), each in its own
file, six of them building their blocks from a shared `parts.py`. Every run's JSON is checked against the
uncached run's (the edited runs against an uncached run of the edited project). Timed with `benchmarks/timing.py`:
wall clock from outside, and the CPU time of every process a run starts (the fork server and its children
included), the steadier figure on a busy machine. Each process runs with one torch thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import shutil
import sys
import tempfile
from pathlib import Path

from timing import Measured, measure

MODELS = 30
SHARED = 6  # models that import parts.py
CNN = '''import torch.nn as nn


class Net{index}(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, {width}, 3, padding=1), {first}
            nn.Conv2d({width}, {width}, 3, padding=1), nn.BatchNorm2d({width}), nn.ReLU(),
        )
        self.head = nn.Linear({width}, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))
'''
MLP = '''import torch.nn as nn


def build_model{index}():
    return nn.Sequential(nn.Linear(16, {width}), {first} nn.Linear({width}, 4))
'''
SHARED_MODEL = '''import torch.nn as nn

from parts import block


class Shared{index}(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, {width}), block({width}), nn.Linear({width}, 4))

    def forward(self, x):
        return self.body(x)
'''
PARTS = '''import torch.nn as nn


def block(width):
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(0.1))
'''


def width_of(index: int) -> int:
    return 8 + 4 * index


def make_project(root: Path) -> None:
    (root / "pyproject.toml").write_text("[project]\nname = 'models'\n")
    models = root / "models"
    models.mkdir()
    (models / "parts.py").write_text(PARTS)
    for index in range(MODELS):
        width = width_of(index)
        if index < SHARED:
            text = SHARED_MODEL.format(index=index, width=width)
        elif index % 2:
            first = "nn.Dropout(0.1), nn.ReLU()," if index % 3 == 0 else "nn.BatchNorm2d({w}), nn.ReLU(),".format(w=width)
            text = CNN.format(index=index, width=width, first=first)
        else:
            first = "nn.Dropout(0.2), nn.Tanh()," if index % 4 == 0 else "nn.ReLU(),"
            text = MLP.format(index=index, width=width, first=first)
        (models / f"model_{index:02d}.py").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("AUDIT_NO_CACHE", None)
    rows: dict[str, list[Measured]] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_project(root)
        cache = root / "cache"
        audit = [sys.executable, "-m", "auditor", str(root / "models"), "--format", "json", "--cache-dir", str(cache)]

        def run(label: str, *extra: str) -> Measured:
            measured = measure([*audit, *extra], env=env).audited()
            rows.setdefault(label, []).append(measured)
            return measured

        for _ in range(args.repeat):
            shutil.rmtree(cache, ignore_errors=True)
            uncached = run("`--no-cache`", "--no-cache")
            cold = run("cold (empty cache)")
            warm = run("warm (nothing changed)")
            assert cold.stdout == warm.stdout == uncached.stdout, "cached output differs"
            for label, index in (("one MLP file edited", MODELS - 2), ("one CNN file edited", MODELS - 1)):
                edited = root / "models" / f"model_{index:02d}.py"
                original = edited.read_text()
                edited.write_text(original.replace(str(width_of(index)), str(width_of(index) + 2)))  # its layers made wider
                _check(run(label), audit, env)
                edited.write_text(original)
                measure(audit, env=env).audited()  # the edit's entry replaced the original's: store it again
            (root / "models" / "parts.py").write_text(PARTS.replace("nn.ReLU(), nn.Dropout(0.1)", "nn.Dropout(0.1), nn.ReLU()"))
            _check(run(f"`parts.py` edited ({SHARED} models import it)"), audit, env)
            (root / "models" / "parts.py").write_text(PARTS)
    cold = rows["cold (empty cache)"]
    cold_wall, cold_cpu = statistics.median(m.wall for m in cold), statistics.median(m.cpu for m in cold)
    print(f"| `audit DIR`, {MODELS} model files | wall | CPU, all processes | against cold: wall, CPU |\n| --- | --- | --- | --- |")
    for label, runs in rows.items():
        wall, cpu = statistics.median(m.wall for m in runs), statistics.median(m.cpu for m in runs)
        print(f"| {label} | {wall:.2f} s | {cpu:.2f} s | {wall / cold_wall:.2f}, {cpu / cold_cpu:.2f} |")


def _check(measured: Measured, audit: list[str], env: dict[str, str]) -> None:
    """A partly cached run says what an uncached run of the same files says."""
    uncached = measure([*audit, "--no-cache"], env=env).audited()
    assert measured.stdout == uncached.stdout, "a partly cached run differs from an uncached one"


if __name__ == "__main__":
    main()
