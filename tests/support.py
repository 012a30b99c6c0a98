"""Shared test helpers: run the engine in-process, read `# expect:` marks from fixtures, run the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from filelock import FileLock

from auditor.engine import Engine
from auditor.findings import Report, TargetResult
from auditor.options import Options
from auditor.rule import default_settings
from auditor.selection import Selection
from auditor.targets import parse_target

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
EXPECT = re.compile(r"#\s*expect:\s*(?P<codes>[A-Z0-9, ]+)")
HEADER = re.compile(r"^#\s*(?P<key>capture|select|input):\s*(?P<value>.+)$", re.MULTILINE)


def options(**overrides: Any) -> Options:
    """Options as the CLI builds them with no config: every rule, default settings."""
    settings = default_settings()
    settings.update(overrides.pop("settings", {}))
    selection = Selection(select=overrides.pop("select", ["ALL"]), ignore=overrides.pop("ignore", []))
    return Options(selection=selection, settings=settings, **overrides)


def run(*targets: str | Path, **overrides: Any) -> Report:
    """Audit targets in-process, as `audit TARGET...` would (target strings or paths). The user modules the
    run imported are forgotten afterwards, as the command's child processes forget them: a fixture's `layers.py`
    must not answer the next test's `import layers`."""
    engine = Engine(options(**overrides))
    parsed = [t for text in targets for t in parse_target(str(text))]
    before = set(sys.modules)
    try:
        report = Report(engine.run(parsed))
    finally:
        forget_user_modules(before)
    assert not engine.planning_errors, engine.planning_errors[0]  # reading the repository must never fail
    return report


def forget_user_modules(before: set[str]) -> None:
    """Forget the modules imported since `before` that come from the fixtures or a test's temporary folder, never the tool's or an installed package's, even
    when the checkout itself lies in the temporary folder (a clone under /tmp: forgetting torch's submodules
    there re-imported them over the live extension, and the next test crashed)."""
    import auditor
    import auditor_rules

    roots = (os.path.realpath(FIXTURES), os.path.realpath(tempfile.gettempdir()))
    kept = tuple(os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, os.path.dirname(auditor.__file__),
                                                          os.path.dirname(auditor_rules.__file__)))
    for name in set(sys.modules) - before:
        file = getattr(sys.modules[name], "__file__", None)  # None for an extension's submodules (torch._C._dynamo)
        path = os.path.realpath(file) if file else ""
        if name.startswith("_auditor_notebook_") or (path and path.startswith(roots) and not path.startswith(kept)):
            del sys.modules[name]


def model_results(report: Report) -> list[TargetResult]:
    """The results of models (not the per-file source results)."""
    return [r for r in report.results if ":" in r.target or r.capture is not None]


def expected_marks(path: Path) -> set[tuple[str, int]]:
    """(code, line) for every `# expect: CODE[, CODE]` comment in a fixture file."""
    marks = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = EXPECT.search(line)
        if match:
            marks.update((code.strip(), number) for code in match.group("codes").split(",") if code.strip())
    return marks


def fixture_header(path: Path) -> dict[str, list[str]]:
    """Header comments of a fixture: `# capture: fx hooks`, `# select: DRO001`, `# input: 2,3,8,8 long:2,16`."""
    found: dict[str, list[str]] = {}
    for match in HEADER.finditer(path.read_text()):
        key, value = match.group("key"), match.group("value")
        words = value.split() if key == "input" else value.replace(",", " ").split()
        found.setdefault(key, []).extend(words)
    return found


def wait_for(check: Any, seconds: float = 60) -> None:
    """Poll `check()` until it is true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed `audit` command in a subprocess (for exit codes, stdout/stderr separation)."""
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    command = [sys.executable, "-m", "auditor", *args]
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Any:
    """`build(folder)` once per test run, shared by pytest-xdist's workers (a module-scoped fixture is otherwise built
    once in every worker that runs one of its tests: a whole `audit --fix` run twice with -n 2). The first worker
    builds it under a lock in the run's shared temporary folder and stores the JSON of what it returns; the others
    wait for it and read that."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    stored = root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not stored.exists():
            stored.write_text(json.dumps(build(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root)))))
        return json.loads(stored.read_text())


def invoke(*args: str) -> Any:
    """Run the `audit` command in this process (click's CliRunner): its output and exit code without the start of a
    new interpreter and its `import torch`, where the process itself is not what a test checks."""
    from typer.testing import CliRunner

    from auditor.cli import audit_app

    return CliRunner().invoke(audit_app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})


def fix_fixtures() -> list[Path]:
    """The fixtures --fix is checked on: every rule fixture with a finding of a fixable rule, and every fix fixture."""
    from auditor.rule import all_rules

    fixable = {r.code for r in all_rules() if r.fixable}
    rules = [p for p in sorted((FIXTURES / "rules").glob("*.py")) if {c for c, _ in expected_marks(p)} & fixable]
    return rules + sorted((FIXTURES / "fix").glob("*.py"))
