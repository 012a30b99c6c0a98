"""The result cache: a run whose targets and the files they read are unchanged answers from `.audit_cache/`
without importing torch, byte for byte as an uncached run would; an edit (to a target, to a module it imports, to
a data file its build reads) re-audits what it touches and nothing else; an entry that is not whole and current
is never trusted; --fix always runs. (What it saves: benchmarks/cache.py.)

The suite runs with AUDIT_NO_CACHE=1 (conftest.py); these tests lift it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auditor.cache import ResultCache, folder_chooser
from auditor.runner import run_targets
from auditor.targets import parse_target
from support import FIXTURES, cli, invoke, options

RULES = FIXTURES / "rules"
PARTS = '''
import torch.nn as nn


def block(width):
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(0.1))
'''
MODEL = '''
import torch.nn as nn

from parts import block


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), block(32), nn.Linear(32, 4))

    def forward(self, x):
        return self.body(x)
'''
SIZED = '''
import json
from pathlib import Path

import torch.nn as nn


class Sized(nn.Module):
    def __init__(self):
        super().__init__()
        widths = json.loads((Path(__file__).parent / "widths.json").read_text())
        try:  # a file it looks for: creating it changes the model
            widths.update(json.loads((Path(__file__).parent / "override.json").read_text()))
        except FileNotFoundError:
            pass
        self.first = nn.Linear(16, widths["hidden"])
        self.drop = nn.Dropout(0.1)
        self.act = nn.ReLU()
        self.order = widths["order"]
        self.last = nn.Linear(widths["hidden"], 4)

    def forward(self, x):
        h = self.first(x)
        h = self.act(self.drop(h)) if self.order == "dropout-first" else self.drop(self.act(h))
        return self.last(h)
'''


@pytest.fixture(autouse=True)
def cache_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIT_NO_CACHE", raising=False)
    monkeypatch.delenv("AUDIT_CACHE_DIR", raising=False)


BROKEN = '''
import torch.nn as nn


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        raise ValueError("no width given")
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project (pyproject.toml at its root) with models: clean, with findings, one importing a local module,
    one whose build reads a data file, one that fails to build, and a plain module."""
    root = tmp_path / "project"
    (root / "models").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    for name in ("clean_mlp.py", "dro001_modules.py", "nrm002_bias.py"):
        (root / "models" / name).write_text((RULES / name).read_text())
    (root / "models" / "parts.py").write_text(PARTS.lstrip())
    (root / "models" / "net.py").write_text(MODEL.lstrip())
    (root / "models" / "sized.py").write_text(SIZED.lstrip())
    (root / "models" / "widths.json").write_text('{"hidden": 32, "order": "activation-first"}')
    (root / "models" / "util.py").write_text("def helper(x):\n    return x + 1\n")
    (root / "broken").mkdir()
    (root / "broken" / "broken.py").write_text(BROKEN.lstrip())
    return root


def entries(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*.json")}


def audited(target: Path | str, **overrides: object) -> tuple[list[str], list[dict]]:
    """Audit `target` in this process through the runner, with the default cache: the labels of the targets
    audited (a hit reports none) and the results as JSON records."""
    started: dict[str, None] = {}
    run_options = options(**overrides)
    cache = ResultCache(run_options, folder_chooser(None, None))
    results = run_targets(parse_target(str(target)), run_options, cache=cache,
                          progress=lambda text: ": " not in text and started.setdefault(text))  # "LABEL: phase" too
    return list(started), [r.to_json() for r in results]


def test_a_warm_run_is_answered_without_torch_and_prints_what_an_uncached_run_prints(project: Path) -> None:
    targets = [str(project / "models" / name) for name in ("clean_mlp.py", "dro001_modules.py", "util.py")] + [str(project / "broken")]
    cold = cli(*targets, "--format", "json", "--fail-on", "warning")
    assert cold.returncode == 2, cold.stderr  # Broken fails to build: an error of the user's code, stored as such
    stored = entries(project / ".audit_cache")
    assert len(stored) == 4  # one per file, the plain module's included
    assert (project / ".audit_cache" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert (project / ".audit_cache" / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    for output_format in ("json", "text", "sarif"):
        args = [*targets, "--format", output_format, "--fail-on", "warning"]
        # the cold run audited everything: it is the uncached run of its format; the others run uncached in this
        # process (the command's code; what a new process would do differently is the warm run's question)
        if output_format == "json":
            uncached = (cold.returncode, cold.stdout, cold.stderr)
        else:
            done = invoke(*args, "--no-cache")
            uncached = (done.exit_code, done.stdout, done.stderr)
        probe = ("import sys\nfrom auditor.cli import main\n"
                 f"sys.argv = ['audit', *{args!r}]\n"
                 "try:\n    main()\n"
                 "except SystemExit as exit:\n    sys.stderr.write(f'exit {exit.code} {\"torch\" in sys.modules}')\n")
        warm = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
        assert warm.stderr.endswith("exit 2 False"), warm.stderr  # no torch: nothing was audited again
        assert (2, warm.stdout, warm.stderr.removesuffix("exit 2 False")) == uncached, output_format
    assert entries(project / ".audit_cache") == stored


def test_an_edit_reaudits_what_it_touches_and_nothing_else(project: Path) -> None:
    models = project / "models"
    first, before = audited(models)
    assert len(first) == 7
    assert audited(models) == ([], before)

    # a module the model imports: the model is audited again, and finds what the edit did
    (models / "parts.py").write_text(PARTS.replace("nn.ReLU(), nn.Dropout(0.1)", "nn.Dropout(0.1), nn.ReLU()").lstrip())
    again, after = audited(models)
    assert sorted(again) == sorted(str(models / name) for name in ("net.py", "parts.py"))
    net = {r["target"]: r for r in after}[f"{models}/net.py:Net"]
    assert [f["code"] for f in net["findings"]] == ["DRO001"]

    # a data file the build read
    (models / "widths.json").write_text('{"hidden": 32, "order": "dropout-first"}')
    again, after = audited(models)
    assert again == [str(models / "sized.py")]
    sized = {r["target"]: r for r in after}[f"{models}/sized.py:Sized"]
    assert [f["code"] for f in sized["findings"]] == ["DRO001"]

    # a file the build looked for and did not find, created
    (models / "override.json").write_text('{"order": "activation-first"}')
    again, after = audited(models)
    assert again == [str(models / "sized.py")]
    assert {r["target"]: r for r in after}[f"{models}/sized.py:Sized"]["findings"] == []

    # a target itself; a touch that changes nothing keeps the entry (it is judged by content)
    (models / "util.py").write_text("def helper(x):\n    return x + 2\n")
    os.utime(models / "clean_mlp.py")
    assert audited(models)[0] == [str(models / "util.py")]


def test_options_that_change_results_are_in_the_key_and_output_options_are_not(project: Path) -> None:
    target = project / "models" / "nrm002_bias.py"
    audited(target)
    assert audited(target, fail_on=3)[0] == []
    for changed in ({"select": ["DRO"]}, {"inputs": ["3,16"]}, {"settings": {"max-plain-depth": 3}}):
        assert audited(target, **changed)[0] == [str(target)], changed


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "garbage", "foreign", "empty"])
def test_a_damaged_or_foreign_entry_is_audited_again_never_trusted(project: Path, damage: str) -> None:
    target = project / "models" / "dro001_modules.py"
    _, before = audited(target)
    [entry] = (project / ".audit_cache").rglob("*.json")
    data = entry.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "corrupt": data.replace(b'"DRO001"', b'"DRO002"', 1),  # the same length; the checksum no longer holds
        "garbage": os.urandom(len(data)),
        "foreign": _whole(data.split(b"\n", 1)[1].replace(b'"format":1', b'"format":99')),  # whole, of another format
        "empty": b"",
    }[damage]
    assert damaged != data
    entry.write_bytes(damaged)
    again, after = audited(target)
    assert again == [str(target)] and after == before
    assert audited(target) == ([], before)  # written again, whole


def _whole(body: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def test_fix_runs_for_real_and_leaves_the_cache_alone(project: Path, tmp_path: Path) -> None:
    target = str(project / "models" / "dro001_modules.py")
    assert cli(target, "--format", "json").returncode == 0
    stored = entries(project / ".audit_cache")
    fixed = cli(target, "--fix", "--out", str(tmp_path / "fixed"), "--format", "json")
    assert fixed.returncode == 0, fixed.stderr
    assert (tmp_path / "fixed").is_dir()
    assert [f["action"] for r in json.loads(fixed.stdout)["results"] for f in r["fixes"]]
    assert entries(project / ".audit_cache") == stored


def test_a_target_whose_child_did_not_complete_is_not_stored(project: Path) -> None:
    dies = project / "models" / "dies.py"
    dies.write_text((FIXTURES / "isolation" / "exits_in_build.py").read_text())
    for _ in range(2):
        started, results = audited(f"{dies}:Net")
        assert started == [f"{dies}:Net"]
        assert results[0]["error"].startswith("exited with status 3 while building Net")
    assert not list((project / ".audit_cache").rglob("*.json"))


def test_a_guard_refusal_is_kept_as_not_audited_and_never_answers_for_a_named_model(project: Path, tmp_path: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole file whose import writes a file is refused by the guard: the entry keeps "not audited" (a warm run
    says it again without running anything), `file.py:Net` (consent) is a target of its own and is audited, and
    once the side effect is gone the file is audited again and passes."""
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("AUDITOR_TEST_MARKERS", str(markers))
    writes = project / "models" / "writes.py"
    writes.write_text((FIXTURES / "guard" / "io_open.py").read_text())
    cold = audited(writes)
    assert cold[0] == [str(writes)]
    refused = {r["target"]: r for r in cold[1]}[f"{writes}:Net"]
    assert refused["status"] == "skipped" and refused["reason"].startswith(f"not audited: its code writes {markers}/io_open at import")
    assert audited(writes) == ([], cold[1])
    assert not (markers / "io_open").exists()

    started, results = audited(f"{writes}:Net")
    assert started == [f"{writes}:Net"]
    assert [r["status"] for r in results] == ["ok"]
    assert (markers / "io_open").exists()

    writes.write_text(writes.read_text().replace('log = io.open(os.path.join(os.environ["AUDITOR_TEST_MARKERS"], "io_open"), "w")', "log = None"))
    started, results = audited(writes)
    assert started == [str(writes)]
    assert {r["target"]: r["status"] for r in results}[f"{writes}:Net"] == "ok"


def test_where_the_cache_goes(project: Path, tmp_path: Path) -> None:
    plain = str(project / "models" / "util.py")  # its source checks are stored too, and need no torch
    assert cli(plain, "--no-cache").returncode == 0
    assert cli(plain, env={"AUDIT_NO_CACHE": "1"}).returncode == 0
    assert not (project / ".audit_cache").exists()
    assert cli(plain).returncode == 0
    assert list((project / ".audit_cache").rglob("*.json"))  # at the project root, not in the target's folder
    named = tmp_path / "elsewhere"
    assert cli(plain, "--cache-dir", str(named)).returncode == 0
    assert cli(plain, env={"AUDIT_CACHE_DIR": str(tmp_path / "from-env")}).returncode == 0
    (project / "pyproject.toml").write_text("[tool.auditor]\ncache-dir = 'build/audit'\n")
    assert cli(plain).returncode == 0
    assert all(list(folder.rglob("*.json")) for folder in (named, tmp_path / "from-env", project / "build" / "audit"))
    bare = tmp_path / "bare"  # no pyproject.toml or .git above it: the working directory's
    bare.mkdir()
    (bare / "util.py").write_text("VALUE = 1\n")
    assert cli(str(bare / "util.py"), cwd=tmp_path).returncode == 0
    assert list((tmp_path / ".audit_cache").rglob("*.json"))


def test_runs_at_once_share_the_cache(project: Path) -> None:
    """Two runs storing the same entries at once: each replaces an entry whole, and a third run is answered."""
    targets = [str(project / "models" / name) for name in ("clean_mlp.py", "dro001_modules.py")]
    command = [sys.executable, "-m", "auditor", *targets, "--format", "json"]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
            for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in both]
    uncached = invoke(*targets, "--format", "json", "--no-cache")  # the reference output: in this process
    assert outputs == [uncached.stdout] * 2
    stored = entries(project / ".audit_cache")
    assert len(stored) == 2 and not list((project / ".audit_cache").rglob("*.tmp"))
    assert audited(targets[0])[0] == [] and audited(targets[1])[0] == []


def test_baselines_filter_what_the_cache_answers(project: Path) -> None:
    target = str(project / "models" / "dro001_modules.py")
    baseline = str(project / "baseline.json")
    assert cli(target, "--write-baseline", baseline).returncode == 0
    uncached = invoke(target, "--baseline", baseline, "--format", "json", "--fail-on", "info", "--no-cache")  # in this process
    warm = cli(target, "--baseline", baseline, "--format", "json", "--fail-on", "info")
    assert (warm.returncode, warm.stdout) == (uncached.exit_code, uncached.stdout) == (0, uncached.stdout)
    assert json.loads(warm.stdout)["baseline"]["hidden"] == 2


BUILT_ELSEWHERE = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, width, dropout_first):
        super().__init__()
        self.first = nn.Linear(16, width)
        self.pair = [nn.Dropout(0.1), nn.ReLU()] if dropout_first else [nn.ReLU(), nn.Dropout(0.1)]
        self.body = nn.Sequential(self.first, *self.pair, nn.Linear(width, 4))

    def forward(self, x):
        return self.body(x)
'''
TRAIN = '''
import json

from net import Net

with open("cfg.json") as f:
    cfg = json.load(f)
model = Net(WIDTH, dropout_first=cfg["dropout_first"])
'''


def test_constructor_arguments_read_from_other_files_are_part_of_the_key(tmp_path: Path) -> None:
    """Net's arguments come from train.py's call and the cfg.json it reads (never run): an edit to either that
    changes how Net is built re-audits net.py; an edit elsewhere, or one that changes nothing, does not."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (tmp_path / "net.py").write_text(BUILT_ELSEWHERE.lstrip())
    (tmp_path / "train.py").write_text(TRAIN.lstrip().replace("WIDTH", "32"))
    (tmp_path / "cfg.json").write_text('{"dropout_first": false}')
    (tmp_path / "util.py").write_text("def helper(x):\n    return x + 1\n")
    target = tmp_path / "net.py"

    def net() -> dict:
        return {r["target"]: r for r in after}[f"{target}:Net"]

    first, after = audited(target)
    assert first == [str(target)] and net()["findings"] == [] and net()["built"] == f"built as in {tmp_path}/train.py:7"
    assert audited(target) == ([], after)

    (tmp_path / "cfg.json").write_text('{"dropout_first": true}')  # a config the script reads
    again, after = audited(target)
    assert again == [str(target)] and [f["code"] for f in net()["findings"]] == ["DRO001"]

    (tmp_path / "train.py").write_text(TRAIN.lstrip().replace("WIDTH", "48"))  # the call site itself
    again, after = audited(target)
    assert again == [str(target)] and net()["built"] == f"built as in {tmp_path}/train.py:7"

    (tmp_path / "util.py").write_text("def helper(x):\n    return x + 2\n")  # a file that has no say in it
    (tmp_path / "train.py").write_text(TRAIN.lstrip().replace("WIDTH", "48") + "print('done')\n")  # a line that has none
    assert audited(target)[0] == []
