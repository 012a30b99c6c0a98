"""How many of the faults `--fix --out` fixes (and of the training-script faults with a source fix) does `--fix` fix in
the user's own file?

    python benchmarks/source_fix.py            # markdown table on stdout, one row per fixture
    python benchmarks/source_fix.py --json     # the same as data
    python benchmarks/source_fix.py --group training   # one folder of fixtures

Every fixture of tests/fixtures/seeded, rules, fix and training (each reported apart) is configured
as a target with the inputs its header names, in one `[tool.auditor]` configuration per run. First
`audit --fix --out TMP --format json` on the fixtures: the faults a fixed copy fixes are the `fixes[]` of its
results (code and module, counted), and those of a training script the findings of rules with a source fix
(CLP001, TRN001, TRN002). Then `audit --fix --unsafe-fixes --format json` on copies of the files: a fault
counts as fixed in the source when that run lists a fix of it and its re-audit (the findings it reports, after the
edits were proven) has no finding of that code on that module left. A fixture counts when all of its faults do. The
edit's size is the number of lines its unified diff adds and removes.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from auditor.rule import all_rules  # noqa: E402
from support import fixture_header  # noqa: E402

GROUPS = ("seeded", "rules", "fix", "training")
# Training-script rules: `--fix --out` has nothing to copy for them, so their faults are their findings.
SCRIPT_FIXED = frozenset(r.code for r in all_rules() if r.scope == "source" and getattr(r, "source_fix", None) is not None)


def audit(config: Path, *args: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-m", "auditor", "--config", str(config), *args, "--format", "json", "--jobs", "2"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=7200)
    try:
        return json.loads(done.stdout)["results"]
    except (json.JSONDecodeError, KeyError):
        sys.exit(f"audit failed: {done.stderr.strip()[-500:]}")


def configure(paths: list[Path], folder: Path) -> Path:
    lines = ["[tool.auditor]", "targets = ["]
    for path in paths:
        inputs = json.dumps(fixture_header(path).get("input", []))
        lines.append(f'  {{ target = "{path}", input = {inputs} }},')
    config = folder / "pyproject.toml"
    config.write_text("\n".join(lines + ["]", ""]))
    return config


def counted(results: list[dict], path: Path, key: str) -> Counter[tuple[str, str | None]]:
    """(code, module) of each fix (or finding) the run lists for the fixture (`group/name.py`, original or copy),
    counted: several functional dropouts of one module are several faults."""
    name = f"{path.parent.name}/{path.name}"
    return Counter((f["code"], f["module"]) for r in results if r["target"].split(":")[0].endswith(name) for f in r.get(key, []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--group", action="append", choices=GROUPS, help="a folder of tests/fixtures (default: all)")
    args = parser.parse_args()
    paths = [p for group in args.group or GROUPS for p in sorted((ROOT / "tests" / "fixtures" / group).glob("*.py"))]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "copies").mkdir()
        fixed_copy = audit(configure(paths, root), "--fix", "--out", str(root / "out"))
        copies = {}
        for path in paths:
            copy = root / "copies" / path.parent.name / path.name
            copy.parent.mkdir(exist_ok=True)
            shutil.copy(path, copy)
            copies[path] = copy
        (root / "copies" / "config").mkdir()
        in_place = audit(configure(list(copies.values()), root / "copies" / "config"), "--fix", "--unsafe-fixes")
        for path in paths:
            wanted = counted(fixed_copy, path, "fixes") + Counter({k: n for k, n in counted(fixed_copy, path, "findings").items() if k[0] in SCRIPT_FIXED})
            if not wanted:
                continue
            copy = copies[path]
            edited, remaining = counted(in_place, copy, "fixes"), counted(in_place, copy, "findings")
            done = Counter({k: max(0, min(n, edited[k], n - remaining[k])) for k, n in wanted.items()})
            diff = [line for line in difflib.unified_diff(path.read_text().splitlines(), copy.read_text().splitlines(), lineterm="")
                    if line[:1] in "+-" and not line.startswith(("+++", "---"))]
            rows.append({"group": path.parent.name, "fixture": f"{path.parent.name}/{path.name}", "faults": sum(wanted.values()),
                         "fixed": sum(done.values()), "lines": len(diff),
                         "missed": sorted(f"{c} [{m}]" for (c, m), n in (wanted - done).items() for _ in range(n))})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| fixture | faults `--out` fixes | fixed in the file, re-audit clean | lines changed | not fixed |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['fixture']} | {row['faults']} | {row['fixed']} | {row['lines']} | {', '.join(row['missed'])} |")
    for group in GROUPS:
        part = [r for r in rows if r["group"] == group]
        if part:
            whole = sum(r["fixed"] == r["faults"] for r in part)
            print(f"\n{group}: {whole}/{len(part)} fixtures fixed whole, {sum(r['fixed'] for r in part)}/{sum(r['faults'] for r in part)} "
                  f"faults; median edit {statistics.median(r['lines'] for r in part):g} lines changed")


if __name__ == "__main__":
    main()
