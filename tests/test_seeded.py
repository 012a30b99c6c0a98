"""Seeded faults: tiny versions of well-known architectures (tests/fixtures/seeded/: a CIFAR ResNet whose
projection shortcut is missing, a GPT whose dropout sits before its GELU, a U-Net without its decoder padding...),
each with one fault planted, audited as a user runs the tool. Every fault is found with the right code, module,
file and line and nothing else is reported (`# expect: CODE [module globs]` marks the line); exactly the codes the
`# fixable:` header names are called fixable, and `--fix` fixes them: the written folder loads, runs and
re-audits clean of them."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch

from auditor.options import FixOptions
from support import FIXTURES, cli, fixture_header, model_results, run

SEEDED = sorted((FIXTURES / "seeded").glob("*.py"))
_MARK = re.compile(r"#\s*expect:\s*(?P<codes>[A-Z0-9, ]+?)\s*(?:\[(?P<modules>[^\]]*)\])?\s*$")
_FIXABLE = re.compile(r"^#\s*fixable:\s*(?P<codes>.+)$", re.MULTILINE)


def _marks(path: Path) -> dict[tuple[str, int], list[str]]:
    """(code, line) -> the module globs its findings must match (empty: any module)."""
    marks: dict[tuple[str, int], list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _MARK.search(line)
        if match:
            globs = [g.strip() for g in (match.group("modules") or "").split(",") if g.strip()]
            for code in match.group("codes").replace(",", " ").split():
                marks[(code, number)] = globs
    return marks


def _fixable(path: Path) -> set[str]:
    match = _FIXABLE.search(path.read_text())
    return set(match.group("codes").replace(",", " ").split()) if match else set()


def _check_findings(path: Path, findings: list, where: str) -> None:
    marks = _marks(path)
    found = {(f.code, f.line) for f in findings}
    listed = "\n".join(f"  {f.code} {f.file}:{f.line} [{f.module}] {f.message}" for f in findings)
    assert found == set(marks), f"{where}: expected {sorted(marks)}, got:\n{listed}"
    for f in findings:
        assert Path(f.file).name == path.name, f"{where}: {f.code} points at {f.file}"
        globs = marks[(f.code, f.line)]
        assert not globs or any(fnmatch(f.module or "", g) for g in globs), f"{where}: {f.code} at module {f.module!r}, not {globs}"
    for (code, line), globs in marks.items():
        for glob in globs:
            assert any(f.code == code and f.line == line and fnmatch(f.module or "", glob) for f in findings), f"{where}: no {code} at {glob}"


@pytest.mark.parametrize("path", SEEDED, ids=lambda p: p.stem)
def test_seeded_fault_is_found_where_it_is(path: Path) -> None:
    report = run(path, inputs=fixture_header(path).get("input", []))
    models = model_results(report)
    assert len(models) == 1 and models[0].status == "ok", [r.error for r in models]
    findings = [f for r in report.results for f in r.findings]
    _check_findings(path, findings, path.name)
    assert {f.code for f in findings if f.fixable} == _fixable(path), [(f.code, f.fixable) for f in findings]


@pytest.mark.parametrize("path", [p for p in SEEDED if _fixable(p)], ids=lambda p: p.stem)
def test_seeded_fault_is_fixed_and_the_fixed_model_verified(path: Path, tmp_path: Path) -> None:
    inputs = fixture_header(path).get("input", [])
    report = run(path, inputs=inputs, fix=FixOptions(out=tmp_path / "fixed"))
    result = model_results(report)[0]
    assert result.status == "ok", result.error
    codes = _fixable(path)
    assert codes <= {f.code for f in result.fixes}, (result.fixes, result.capture.notes)
    assert not [f for f in result.findings if f.code in codes], result.findings
    folder = Path(result.fixed_path)
    written = _import(folder / "model.py")
    model, example = written.load_model(), written.example_inputs()
    with torch.no_grad():
        model.eval()(*(example if isinstance(example, tuple) else (example,)))
    again = run(folder)
    assert all(r.status == "ok" for r in again.results), [r.error for r in again.results]
    assert not [f for r in again.results for f in r.findings if f.code in codes]


def test_the_command_line_finds_every_seeded_fault(tmp_path: Path) -> None:
    """One `audit --format json` run over every seeded model (configured as targets with their inputs): the same
    findings at the same places as in-process."""
    entries = [
        f'  {{ target = "{p}:{_model_name(p)}", input = {json.dumps(fixture_header(p).get("input", []))} }},' for p in SEEDED
    ]
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.auditor]\ntargets = [\n" + "\n".join(entries) + "\n]\n")
    done = cli("--format", "json", "--config", str(config), timeout=600)
    assert done.returncode == 1, done.stderr
    records = json.loads(done.stdout)["results"]
    for path in SEEDED:
        result = next(r for r in records if r["target"].endswith(f"{path.name}:{_model_name(path)}"))
        assert result["status"] == "ok", result
        findings = [_Record(**{k: f[k] for k in ("code", "module", "file", "line", "message")}) for f in result["findings"]]
        _check_findings(path, findings, f"CLI {path.name}")


class _Record:
    def __init__(self, code: str, module: str | None, file: str, line: int, message: str) -> None:
        self.code, self.module, self.file, self.line, self.message = code, module, file, line, message


def _model_name(path: Path) -> str:
    """The fixture's model: its last top-level class."""
    return re.findall(r"^class (\w+)\(nn\.Module\)", path.read_text(), re.MULTILINE)[-1]


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"seeded_fixed_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
