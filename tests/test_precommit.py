"""The published pre-commit hooks, and what the `audit` hook does on a commit's plain Python files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from auditor.locations import display_path
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


def test_readme_snippet_uses_the_published_hooks_with_one_pinned_environment():
    snippet = re.search(r"```yaml\n(# \.pre-commit-config\.yaml\n.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert snippet, "README has no .pre-commit-config.yaml snippet"
    (repo,) = yaml.safe_load(snippet.group(1))["repos"]
    published = {hook["id"] for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert {hook["id"] for hook in repo["hooks"]} == published
    pins = {tuple(hook.get("additional_dependencies", [])) for hook in repo["hooks"]}
    assert len(pins) == 1 and re.fullmatch(r"torch==[\d.]+", next(iter(pins))[0]), "both hooks pin torch alike (one env)"


def test_files_without_models_pass_without_being_imported(tmp_path):
    """The hook passes a commit's files one by one: each plain module is checked from its source, never run
    (what 200 of them cost: benchmarks/discovery.py)."""
    files = []
    for index in range(20):
        path = tmp_path / f"hooked_{index}.py"
        path.write_text(f"import os\n\nVALUE = {index}\n\n\ndef helper(x):\n    return os.path.join(x, 'y')\n")
        files.append(path)
    report = run(*files)
    assert [r.target for r in report.results] == [display_path(str(f)) for f in files]
    assert all(r.status == "ok" and not r.findings for r in report.results)
    assert not any(name.startswith("hooked_") for name in sys.modules)


def test_the_audit_hook_with_fix_edits_the_committed_file(tmp_path):
    """`args: [--fix]` as with ruff's hook: the hook's own command fixes the file in place; what remains at or
    above warnings still fails it (the unsafe fixes, left out without --unsafe-fixes)."""
    import shlex
    import shutil

    from support import FIXTURES, cli

    hook = next(h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text()) if h["id"] == "audit")
    path = tmp_path / "model.py"
    shutil.copy(FIXTURES / "source_fix" / "dro001_sequential" / "before.py", path)
    command = shlex.split(hook["entry"])[1:]
    done = cli(*command, "--fix", str(path), timeout=300)
    assert done.returncode == 1 and "nn.ReLU(inplace=True), nn.Dropout(p=0.1)" in path.read_text()
    done = cli(*command, "--fix", "--unsafe-fixes", str(path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert path.read_text() == (FIXTURES / "source_fix" / "dro001_sequential" / "after.py").read_text()
