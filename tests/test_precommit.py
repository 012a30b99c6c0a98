"""The published pre-commit hooks, and what the `audit` hook does on a commit's plain Python files."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from support import run

ROOT = Path(__file__).parent.parent


def test_hooks_manifest():
    hooks = {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"audit", "audit-models"}
    for hook in hooks.values():
        assert hook["entry"].startswith("audit ") and "--fail-on warning" in hook["entry"]
        assert hook["language"] == "python" and hook["types_or"] == ["python"] and hook["require_serial"] is True
    assert hooks["audit-models"]["pass_filenames"] is False
    assert hooks["audit"].get("pass_filenames", True) is True


def test_files_without_models_pass_quickly(tmp_path):
    files = []
    for index in range(20):
        path = tmp_path / f"util_{index}.py"
        path.write_text(f"import os\n\nVALUE = {index}\n\n\ndef helper(x):\n    return os.path.join(x, 'y')\n")
        files.append(path)
    started = time.perf_counter()
    report = run(*files)
    elapsed = time.perf_counter() - started
    assert all(r.status == "ok" and not r.findings for r in report.results)
    assert elapsed < 1.0, f"{elapsed:.2f} s for 20 plain files"
