"""Models far bigger than memory, audited without their weights: whole runs, one at a time, with their wall
time, the CPU time of every process a run starts and the peak RSS of the largest of them. Needs transformers
(`pip install -e ".[bench]"`).

    python benchmarks/large.py                 # the audits, --fix, and plain meta build + forward processes
    python benchmarks/large.py --real-1b       # also the plain real-weight build + forward of the 1B (6.6 GB)

"plain (meta)" is what any structure-only look costs: a process that imports transformers, builds the model under
`torch.device("meta")` and runs one forward on meta inputs. "plain (real)" builds the 1B with real weights and
runs one forward: what `audit` did before it measured models first. The 20B GPT has two planted mistakes
(`benchmarks/large/gpt_20b.py`): both must be found, at the module and line that hold them. `--fix` runs on it
and on the 70B config with `initializer_range` 1.0 (INI001), without their weights: the folder written, then
`audit DIR` of it in a fresh process, which must find nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from timing import measure

HERE = Path(__file__).parent / "large"
AUDITS = {
    "Llama-3-70B, build_model() file": f"{HERE / 'llama3_70b.py'}:build_model",
    "Llama-3-70B, config.json": str(HERE / "llama3_70b" / "config.json"),
    "Llama-3-8B, build_model() file": f"{HERE / 'llama3_8b.py'}:build_model",
    "Llama-3.2-1B, build_model() file": f"{HERE / 'llama3_1b.py'}:build_model",
    "GPT 20B, planted INI001 + DRO001": f"{HERE / 'gpt_20b.py'}:build_model",
}
PLAIN = """
import sys, torch
sys.path.insert(0, {here!r})
from llama3 import llama
with torch.device({device!r}):
    model = llama({size!r})
with torch.no_grad():
    model(torch.zeros(2, 16, dtype=torch.long, device={device!r}))
"""
PLAINS = {
    "Llama-3-70B, plain (meta)": ("70b", "meta"),
    "Llama-3-8B, plain (meta)": ("8b", "meta"),
    "Llama-3.2-1B, plain (meta)": ("1b", "meta"),
}
FIXES = {
    "GPT 20B, planted INI001 + DRO001": f"{HERE / 'gpt_20b.py'}:build_model",
    "Llama-3-70B, config.json with initializer_range 1.0": "planted config",
}
PLANTED = {("DRO001", 13): "mlp.drop", ("INI001", 12): "mlp.up"}  # (code, line in gpt_20b.py) -> module suffix


def timed(command: list[str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds of every process the run started (user + system: what a quiet machine's wall
    time would be), peak RSS in GiB of the largest of them, and stdout (benchmarks/timing.py)."""
    run = measure(command, cwd=HERE.parent.parent)
    return run.wall, run.cpu, run.peak_gib, run.stdout


def audited(stdout: str) -> str:
    """Status, capture and findings of the one model in a JSON report, in words."""
    [result] = [r for r in json.loads(stdout)["results"] if r.get("capture")]
    if result["status"] != "ok":
        return f"{result['status']}: {result.get('error')}"
    counts: dict[str, list[int]] = {}
    for finding in result["findings"]:
        counts.setdefault(finding["code"], []).append(finding["line"])
    found = ", ".join(f"{code} x{len(lines)} (lines {', '.join(map(str, sorted(set(lines))))})" for code, lines in sorted(counts.items()))
    planted = [f"{code} at line {line} ({suffix})" for (code, line), suffix in PLANTED.items()
               if "gpt_20b" in result["target"] and not any(
                   f["code"] == code and f["line"] == line and f["module"].endswith(suffix) for f in result["findings"])]
    missing = f"; MISSING {', '.join(planted)}" if planted else ""
    return f"ok, {result['capture']['method']}, {found or 'no findings'}{missing}"


def fixed(stdout: str) -> str:
    """The fixes of the one model in a JSON report of `--fix`, and what remains, in words."""
    [result] = [r for r in json.loads(stdout)["results"] if r.get("capture")]
    if result["status"] != "ok":
        return f"{result['status']}: {result.get('error')}"
    counts: dict[str, int] = {}
    for fix in result["fixes"]:
        counts[fix["code"]] = counts.get(fix["code"], 0) + 1
    done = ", ".join(f"{code} x{count}" for code, count in sorted(counts.items())) or "nothing to fix"
    return f"{done} fixed, {len(result['findings'])} findings remain"


def time_fixes(folder: Path) -> None:
    """`audit --fix --out DIR` of each FIXES target, then `audit DIR` in a fresh process."""
    config = folder / "planted" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({**json.loads((HERE / "llama3_70b" / "config.json").read_text()), "initializer_range": 1.0}))
    for index, (label, target) in enumerate(FIXES.items()):
        out = folder / f"fixed{index}"
        wall, cpu, rss, stdout = timed([sys.executable, "-m", "auditor", str(config) if target == "planted config" else target,
                                        "--fix", "--out", str(out), "--format", "json"])
        print(f"| `audit --fix` {label} | {wall:.1f} s | {cpu:.1f} s | {rss:.2f} GiB | {fixed(stdout)} |", flush=True)
        wall, cpu, rss, stdout = timed([sys.executable, "-m", "auditor", str(out), "--format", "json"])
        print(f"| `audit DIR` of that fixed folder | {wall:.1f} s | {cpu:.1f} s | {rss:.2f} GiB | {audited(stdout)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-1b", action="store_true", help="also build the 1B with real weights (6.6 GB peak)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores)")
    print("| process | wall | CPU | peak RSS | result |")
    print("| --- | --- | --- | --- | --- |")
    for label, target in AUDITS.items():
        wall, cpu, rss, stdout = timed([sys.executable, "-m", "auditor", target, "--format", "json"])
        print(f"| `audit` {label} | {wall:.1f} s | {cpu:.1f} s | {rss:.2f} GiB | {audited(stdout)} |", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        time_fixes(Path(folder))
    plains = dict(PLAINS)
    if args.real_1b:
        plains["Llama-3.2-1B, plain (real weights)"] = ("1b", "cpu")
    for label, (size, device) in plains.items():
        wall, cpu, rss, _ = timed([sys.executable, "-c", PLAIN.format(here=str(HERE), size=size, device=device)])
        print(f"| {label}: build + one forward | {wall:.1f} s | {cpu:.1f} s | {rss:.2f} GiB | |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
