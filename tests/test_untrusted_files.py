"""What the tool reads without trusting it: a manifest that claims a folder is --fix's, a saved program whose
weights are pickled, a FIFO or device named like a source file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from auditor.manifest import FIXED_MANIFEST
from support import FIXTURES, cli

DRO = FIXTURES / "rules" / "dro001_modules.py"


def _results(stdout: str) -> dict[str, dict]:
    return {r["target"]: r for r in json.loads(stdout)["results"]}


def _folder_with_models(tmp_path: Path) -> Path:
    """A folder holding a real model file, and a module whose import would leave a marker."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(DRO, folder / "real.py")
    (folder / "evil.py").write_text(f"from pathlib import Path\n\nimport torch.nn as nn\n\nPath({str(tmp_path / 'marker')!r}).touch()\n\n\ndef x():\n    return nn.Linear(2, 2)\n")
    return folder


@pytest.mark.parametrize("manifest", [
    '{"tool": "auditor 0.1.0", "module": "evil.py", "factory": "x"}',
    '{"tool": "auditor 0.1.0", "format": 3, "module": "evil.py", "factory": "x", "files": {"evil.py": "%(evil)s"}}',
    '{"tool": "auditor 0.1.0", "format": 3, "models": ["."], "files": {}}',
    '{"tool": "auditor 0.1.0", "format": 3, "models": [".."], "files": {}}',
], ids=["stray", "matching-hash-beside-other-files", "models-dot", "models-dotdot"])
def test_a_stray_manifest_is_not_trusted(tmp_path, manifest):
    """A folder is a --fix output only when its manifest's hashes match its files and nothing else is there:
    otherwise it is audited as the ordinary folder it is (its real models found, nothing imported because
    the manifest names it)."""
    folder = _folder_with_models(tmp_path)
    evil = hashlib.sha256((folder / "evil.py").read_bytes()).hexdigest()
    (folder / FIXED_MANIFEST).write_text(manifest % {"evil": evil} + "\n")
    done = cli("--format", "json", "--fail-on", "warning", str(folder))
    results = _results(done.stdout)
    real = [r for target, r in results.items() if target.endswith("real.py:Head")]
    assert real and [f["code"] for f in real[0]["findings"]] == ["DRO001", "DRO001"], done.stdout
    assert done.returncode == 1, done.stderr
    assert not (tmp_path / "marker").exists()
    assert "internal error" not in done.stdout + done.stderr


def test_an_edited_fixed_folder_is_an_ordinary_folder(tmp_path):
    assert cli("--fix", "--out", "out", f"{DRO}:Head", cwd=tmp_path).returncode == 0
    intact = _results(cli("--format", "json", "out", cwd=tmp_path).stdout)
    assert [(target, r["status"]) for target, r in intact.items()] == [("out", "ok")]  # one fixed model
    with (tmp_path / "out" / "model.py").open("a") as handle:
        handle.write("\n# edited\n")
    edited = _results(cli("--format", "json", "out", cwd=tmp_path).stdout)
    assert list(edited) == ["out/model.py", "out/model.py:build_model"]  # the files it holds, audited as such


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_a_source_file_is_never_read(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(DRO, folder / "real.py")
    os.mkfifo(folder / "x.py")
    os.mkfifo(folder / "config.json")
    done = cli("--format", "json", "--fail-on", "error", str(folder), timeout=120)
    assert done.returncode == 0, done.stderr
    assert [t for t in _results(done.stdout) if "x.py" in t] == []
    for name in ("x.py", "config.json"):
        named = cli(str(folder / name), timeout=120)
        assert named.returncode == 2
        assert named.stderr.strip().endswith("not a regular file (a FIFO, socket or device is never read)"), named.stderr


class _Payload:
    """What a hostile pickle holds: unpickling it calls a function of its choosing (here, one that leaves a mark)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _program_with_payload(tmp_path: Path, part: str) -> Path:
    """A saved torch.export program one of whose parts torch unpickles in full: a weight saved with
    `"use_pickle": true`, or sample inputs the safe loader cannot read (torch retries them unsafely)."""
    import io
    import zipfile

    import torch
    import torch.nn as nn

    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), (torch.randn(2, 4),)), clean)
    payload = io.BytesIO()
    torch.save(_Payload(tmp_path / "marker"), payload)
    program = tmp_path / f"{part}.pt2"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(program, "w") as target:
        files = {item.filename: source.read(item) for item in source.infolist()}
        if part == "weights":
            name = next(n for n in files if n.endswith("model_weights_config.json"))
            config = json.loads(files[name])
            config["config"]["0.bias"]["use_pickle"] = True
            files[name] = json.dumps(config).encode()
            replaced = next(n for n in files if n.endswith("data/weights/" + config["config"]["0.bias"]["path_name"]))
        else:
            replaced = next(n for n in files if "sample_inputs" in n)
        files[replaced] = payload.getvalue()
        for item in source.infolist():
            target.writestr(item, files[item.filename])
    return program


@pytest.mark.parametrize("part", ["weights", "sample_inputs"])
def test_a_program_with_pickled_parts_is_refused_without_trust_pickle(tmp_path, part):
    from support import run

    program = _program_with_payload(tmp_path, part)
    (result,) = run(program).results
    assert result.status == "error" and "refusing to unpickle" in (result.error or "") and "--trust-pickle" in (result.error or "")
    assert not (tmp_path / "marker").exists()
    done = cli(str(program))
    assert done.returncode == 2 and "refusing to unpickle" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "marker").exists()
    run(program, trust_pickle=True)  # consent: torch unpickles it, payload and all
    assert (tmp_path / "marker").exists()
