"""`audit --fix` in place (auditor/sourcefix): each edit on golden before/after files (as TorchFix tests its
codemods), written in several styles; `--diff`; safe and unsafe fixes; the rollback; what may be edited and how it
is written; formatting kept byte for byte outside the edited lines."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditor.cli import audit_app, rules_app
from auditor.findings import Finding, Severity, TargetResult
from auditor.options import FixOptions
from auditor.sourcefix import ops as O
from auditor.sourcefix.apply import EditError, apply_ops
from auditor.sourcefix.files import editable, write_atomically
from auditor.sourcefix.ops import Planned, SourceEdit
from auditor.sourcefix.session import _moved_lines, _unexplained_parameters
from auditor.sourcefix.source import SourceFile
from support import FIXTURES, once_per_run

GOLDEN = FIXTURES / "source_fix"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "before.py").exists())
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(audit_app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})


def _unsafe(case: str) -> bool:
    return "# fix: --unsafe-fixes" in (GOLDEN / case / "before.py").read_text()


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """`audit DIR --fix --format json` over copies of every case's before.py, as a user fixes a folder: one run for
    the cases whose fixes are safe, one with --unsafe-fixes for the others (once per test run, whatever the workers)."""

    def fix_all(root):
        outcome = {}
        for unsafe in (False, True):
            folder = root / ("unsafe" if unsafe else "safe")
            folder.mkdir()
            cases = [c for c in CASES if _unsafe(c) == unsafe]
            for case in cases:
                shutil.copy(GOLDEN / case / "before.py", folder / f"{case}.py")
            result = invoke(str(folder), "--fix", "--format", "json", *(["--unsafe-fixes"] if unsafe else []))
            assert result.exit_code in (0, 1), result.stderr
            record = json.loads(result.stdout)
            for case in cases:
                outcome[case] = (str(folder / f"{case}.py"), [r for r in record["results"] if f"{case}.py" in r["target"]])
        return outcome

    return {case: (Path(path), results) for case, (path, results) in once_per_run(tmp_path_factory, "golden", fix_all).items()}


@pytest.mark.parametrize("case", CASES)
def test_the_edit_is_exactly_the_golden_file(case, fixed):
    """The edited file is `after.py` byte for byte (formatting and comments kept), the fixes name the finding's file
    and line, and the re-audit of the edited file finds nothing: not the fixed faults, nor any other."""
    path, results = fixed[case]
    assert path.read_text() == (GOLDEN / case / "after.py").read_text()
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    fixes = [f for r in results for f in r["fixes"]]
    assert fixes and all(f["file"].endswith(f"{case}.py") and f["line"] for f in fixes)
    assert not [(f["code"], f["module"]) for r in results for f in r["findings"]]  # each case keeps to its one fault


def test_diff_shows_the_edits_and_writes_nothing(tmp_path):
    """`--diff` prints what `--fix` would write (the golden file's diff, with --unsafe-fixes), exits 1, and
    leaves the file alone; without --unsafe-fixes only the safe edit shows."""
    path = tmp_path / "model.py"
    shutil.copy(GOLDEN / "dro001_sequential" / "before.py", path)
    before = path.read_bytes()
    result = invoke(str(path), "--diff")
    assert result.exit_code == 1 and path.read_bytes() == before
    assert result.stdout.count("\n-") == 1 and "+        self.mid = nn.Sequential(nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Dropout(p=0.1)" in result.stdout
    assert "Would fix 1 finding" in result.stderr and "2 more fixes with --unsafe-fixes" in result.stderr
    unsafe = invoke(str(path), "--diff", "--unsafe-fixes")
    expected = difflib.unified_diff(before.decode().splitlines(keepends=True), (GOLDEN / "dro001_sequential" / "after.py").read_text().splitlines(keepends=True),
                                    fromfile=str(path), tofile=str(path))
    assert unsafe.exit_code == 1 and unsafe.stdout == "".join(expected)
    assert path.read_bytes() == before


def test_diff_shows_every_round_of_the_fix(tmp_path):
    """Three fixes in three rounds (two reorders of one nn.Sequential, then the bias the moved BatchNorm exposes):
    `--diff` shows the whole change `--fix` makes, the original against the last round's file, and writes nothing
    (no bytecode of the edited content either)."""
    path = tmp_path / "model.py"
    shutil.copy(GOLDEN / "two_reorders_one_sequential" / "before.py", path)
    before = path.read_bytes()
    result = invoke(str(path), "--diff", "--unsafe-fixes")
    expected = difflib.unified_diff(before.decode().splitlines(keepends=True),
                                    (GOLDEN / "two_reorders_one_sequential" / "after.py").read_text().splitlines(keepends=True),
                                    fromfile=str(path), tofile=str(path))
    assert result.exit_code == 1 and result.stdout == "".join(expected)
    assert "Would fix 3 findings in 1 file" in result.stderr
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.py"]


def test_unwritten_content_is_what_reads_imports_and_linecache_see(tmp_path, monkeypatch):
    """`--diff`'s later rounds audit the edited content without writing it: a module importing the file gets that
    content, as do the tool's reads and the lines of tracebacks; outside, the disk's again."""
    import importlib
    import linecache
    import sys

    from auditor.files import read_text, unwritten

    (tmp_path / "layers_on_disk.py").write_text("WIDTH = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    edited = {os.path.realpath(tmp_path / "layers_on_disk.py"): b"WIDTH = 2  # edited\n"}
    with unwritten(edited):
        module = importlib.import_module("layers_on_disk")
        assert module.WIDTH == 2 and read_text(tmp_path / "layers_on_disk.py") == "WIDTH = 2  # edited\n"
        assert linecache.getline(module.__file__, 1) == "WIDTH = 2  # edited\n"
    sys.modules.pop("layers_on_disk")
    assert importlib.import_module("layers_on_disk").WIDTH == 1 and read_text(tmp_path / "layers_on_disk.py") == "WIDTH = 1\n"
    sys.modules.pop("layers_on_disk")


def test_a_dropout_is_not_moved_past_one_norm_when_it_would_feed_the_next(tmp_path):
    """DRO002: past `bn2` the dropout would feed the BatchNorm1d inside `self.mlp` (called whole, out of the
    source's reach): moved halfway, the edited file would keep the warning, so it is left alone, with a note."""
    path = tmp_path / "model.py"
    path.write_text(
        "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)\n"
        "        self.bn1 = nn.BatchNorm2d(8)\n"
        "        self.drop = nn.Dropout(0.3)\n"
        "        self.bn2 = nn.BatchNorm2d(8)\n"
        "        self.mlp = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))\n\n"
        "    def forward(self, x):\n"
        "        x = F.relu(self.bn1(self.conv(x)))\n"
        "        x = F.relu(self.bn2(self.drop(x)))\n"
        "        return self.mlp(F.adaptive_avg_pool2d(x, 1).flatten(1))\n\n\n"
        "def example_inputs():\n"
        "    return (torch.randn(2, 3, 8, 8),)\n")
    before = path.read_bytes()
    result = invoke(str(path), "--fix", "--unsafe-fixes", "--format", "json")
    assert path.read_bytes() == before, result.stdout
    notes = [n for r in json.loads(result.stdout)["results"] for n in (r.get("capture") or {}).get("notes", [])]
    assert any(n.startswith("fix: DRO002 [drop]") and "not fixed in the source" in n for n in notes), notes


def test_a_block_helper_whose_list_is_reordered_between_is_left_alone(tmp_path):
    """NRM001 in a block helper: `layers.insert(1, norm)` holds only while the lines between the list's literal and
    the append add at its end; here one inserts at the front, so the activation's index is not known: no edit."""
    path = tmp_path / "model.py"
    source = (GOLDEN / "nrm001_block_helper" / "before.py").read_text()
    source = source.replace("            if bn:\n", "            layers.insert(0, nn.Identity())\n            if bn:\n")
    path.write_text(source)
    result = invoke(str(path), "--fix", "--unsafe-fixes", "--format", "json")
    notes = [n for r in json.loads(result.stdout)["results"] for n in (r.get("capture") or {}).get("notes", [])]
    assert "layers.append(nn.BatchNorm2d(out_filters, 0.8))" in path.read_text(), path.read_text()
    assert any(n.startswith("fix: NRM001") and "changed other than by appends" in n for n in notes), notes


def test_diff_of_a_clean_file_is_empty_and_exits_0():
    result = invoke(str(FIXTURES / "rules" / "dro_clean.py"), "--diff")
    assert result.exit_code == 0 and result.stdout == ""


def test_without_unsafe_fixes_only_the_safe_ones_are_applied(tmp_path):
    path = tmp_path / "model.py"
    shutil.copy(GOLDEN / "dro001_sequential" / "before.py", path)
    result = invoke(str(path), "--fix")
    text = path.read_text()
    assert "nn.Sequential(nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Dropout(p=0.1), nn.Linear(32, 32))" in text
    assert "nn.Dropout(0.5),  # regularize the hidden features\n            nn.Tanh()," in text  # unsafe: left
    assert result.exit_code == 0  # warnings remain, below the default --fail-on error
    assert "rerun with --unsafe-fixes" in result.stdout and "2 more fixes with --unsafe-fixes" in result.stdout
    assert "Fixed 1 finding in 1 file" in result.stdout


def test_the_audit_says_which_findings_need_unsafe_fixes(tmp_path):
    """Before any --fix, as ruff: the ReLU's dropout says `--fix`, the Tanh's and GELU's `--fix --unsafe-fixes`, and
    the summary counts them apart; `--fix` then applies exactly the one it promised."""
    path = tmp_path / "model.py"
    shutil.copy(GOLDEN / "dro001_sequential" / "before.py", path)
    result = invoke(str(path), "--no-cache")
    helps = {line.split("] ")[0].rsplit("[", 1)[1]: next_line for line, next_line in zip(result.stdout.splitlines(), result.stdout.splitlines()[1:])
             if " DRO001 [" in line}
    assert helps["mid.1"].endswith("(fixable with --fix)")
    assert helps["body.1"].endswith("(fixable with --fix --unsafe-fixes)") and helps["named.drop"].endswith("(fixable with --fix --unsafe-fixes)")
    assert "1 fixable with `audit --fix` (2 more with `--unsafe-fixes`)." in result.stdout
    assert "Fixed 1 finding in 1 file" in invoke(str(path), "--fix").stdout


def test_audit_rules_and_each_rule_page_say_how_safe_each_fix_is():
    """The `fix` column of `audit rules` and the facts of `audit explain` (with its "Fix safety" section)."""
    listing = runner.invoke(rules_app, ["rules"], env={"COLUMNS": "250"}).stdout.splitlines()
    column = {line.split()[0]: line.split()[3] for line in listing if line.split()[:1] in (["NRM002"], ["NRM001"], ["DRO001"])}
    assert column == {"NRM002": "safe", "NRM001": "unsafe", "DRO001": "sometimes"}
    for code, fact in (("NRM002", "fixable: yes, safe fix"), ("INI001", "fixable: yes, unsafe fix"), ("DRO001", "fixable: yes, safe or unsafe")):
        page = runner.invoke(rules_app, ["explain", code]).stdout
        assert fact in page and "## Fix safety" in page, code


def test_an_edit_after_which_the_model_no_longer_builds_is_rolled_back(tmp_path):
    path = tmp_path / "model.py"
    shutil.copy(GOLDEN / "rollback_bias_init.py", path)
    before = path.read_bytes()
    result = invoke(str(path), "--fix", "--format", "json")
    assert path.read_bytes() == before
    (model,) = [r for r in json.loads(result.stdout)["results"] if r["target"].endswith(":Net")]
    assert model["status"] == "ok" and model["fixes"] == []
    assert [f["code"] for f in model["findings"]] == ["NRM002"]
    assert any("was rolled back" in n and "no longer audits" in n for n in model["capture"]["notes"])
    assert not list(tmp_path.glob(".*audit-fix"))  # no temporary file left behind


def test_only_the_edit_whose_finding_remains_is_rolled_back():
    """The session's check after a round: an edit whose finding the re-audit still reports (same code, module, key
    and message) is rolled back, the edit whose finding is gone stays, and a model that no longer audits takes
    back every edit planned for it."""
    from auditor.sourcefix.session import _Group, _Session

    def edit(module: str) -> SourceEdit:
        return SourceEdit(path="/m.py", ops=(), code="DRO001", module=module, finding_key=None, finding_text="Dropout `#` feeds Tanh",
                          file="m.py", line=3, action="", safe=False, target="m.py:Net")

    def finding(module: str) -> Finding:
        return Finding(code="DRO001", rule="dropout-before-activation", severity=Severity.WARNING, message="Dropout `1` feeds Tanh", module=module)

    def result(*findings: Finding, status: str = "ok") -> TargetResult:
        return TargetResult(target="m.py:Net", status=status, findings=list(findings), planned=Planned(parameters=("w",)))

    kept, undone = _Group([edit("mid.1")]), _Group([edit("body.1")])
    session = _Session(FixOptions(out=None, source=True), lambda: [], [])
    failing = session._check([result(finding("mid.1"), finding("body.1"))], [result(finding("body.1"))], [kept, undone], {}, {})
    assert list(failing) == [undone] and "still reported" in failing[undone]
    assert session._check([result(finding("body.1"))], [result(finding("body.1").__class__(**{**finding("body.1").__dict__, "message": "Dropout `1` feeds BatchNorm"}))],
                          [undone], {}, {}) == {}  # another finding now (it reaches something else): the next round's
    broken = session._check([result()], [result(status="error")], [kept, undone], {}, {})
    assert set(broken) == {kept, undone} and all("no longer audits" in why for why in broken.values())


def test_a_block_too_irregular_for_the_source_is_left_alone_and_said_so(tmp_path):
    path = tmp_path / "model.py"
    shutil.copy(GOLDEN / "irregular_block.py", path)
    before = path.read_bytes()
    result = invoke(str(path), "--fix", "--format", "json")
    (model,) = [r for r in json.loads(result.stdout)["results"] if r["target"].endswith(":Net")]
    assert path.read_bytes() == before and [f["code"] for f in model["findings"]] == ["RES001", "RES001"]
    assert any("too irregular for the source" in n and "--fix --out DIR" in n for n in model["capture"]["notes"])
    padded = invoke(str(path), "--fix", "--shortcut", "pad", "--format", "json")
    (model,) = [r for r in json.loads(padded.stdout)["results"] if r["target"].endswith(":Net")]
    assert path.read_bytes() == before and any("zero-pad shortcut is not written into the source" in n for n in model["capture"]["notes"])


def test_the_build_records_where_each_weight_was_drawn_and_each_constructor_s_values(tmp_path):
    """What the init and shortcut edits read: the user's call that drew a weight last (the constructor's line for
    a default init), and the plain values each instance's __init__ ended with."""
    from auditor.loading.models import ModelLoader
    from auditor.targets import parse_target

    path = tmp_path / "model.py"
    path.write_text(
        "import torch.nn as nn\n\n\n"
        "class Block(nn.Module):\n"
        "    def __init__(self, inp, out, stride=1):\n"
        "        super().__init__()\n"
        "        hidden = 2 * out\n"
        "        self.fc = nn.Linear(inp, hidden)\n"
        "        self.head = nn.Linear(hidden, out)\n"
        "        nn.init.normal_(self.fc.weight, std=1.0)\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.block = Block(4, 3, stride=2)\n\n"
        "    def forward(self, x):\n"
        "        return self.block.head(self.block.fc(x))\n"
    )
    loader = ModelLoader()
    (loaded,) = loader.load(parse_target(f"{path}:Net")[0])
    record = loaded.weights.written_by
    shown = str(path) if not str(path).startswith(os.getcwd()) else os.path.relpath(path)
    (_, _, drawn), = record.named["block.fc.weight"].pieces
    assert drawn.writes == ((shown, 10, "normal_"),)
    (_, _, default), = record.named["block.head.weight"].pieces
    assert default.writes and default.writes[0][:2] == (shown, 9)  # the constructor's own init: its line
    assert loader.sites.init_locals(loaded.model)["block"] == {"inp": 4, "out": 3, "stride": 2, "hidden": 6}


def test_parameter_names_may_change_only_as_the_edit_declares():
    def result(*names: str) -> TargetResult:
        return TargetResult(target="m.py:Net", planned=Planned(parameters=names))

    edit = SourceEdit(path="/m.py", ops=(), code="NRM001", module="body.3", finding_key=None, finding_text="", file="m.py",
                      line=3, action="", safe=False, renamed=(("body.2", "body.3"), ("body.3", "body.2")), dropped=("conv.bias",))
    before = result("body.0.weight", "body.3.weight", "body.3.bias", "conv.weight", "conv.bias")
    assert _unexplained_parameters(before, result("body.0.weight", "body.2.weight", "body.2.bias", "conv.weight"), [edit]) is None
    assert "gained body.4.weight" in _unexplained_parameters(before, result("body.0.weight", "body.4.weight", "body.2.bias", "conv.weight"), [edit])
    shortcut = SourceEdit(path="/m.py", ops=(), code="RES001", module="block", finding_key=None, finding_text="", file="m.py",
                          line=9, action="", safe=True, added=("block.shortcut",))
    assert _unexplained_parameters(result("w"), result("w", "block.shortcut.0.weight"), [shortcut]) is None


def test_files_outside_the_project_are_never_edited(tmp_path):
    assert editable(str(tmp_path / "model.py"), [tmp_path]) is None
    assert "installed package" in editable("/usr/lib/python3/site-packages/torchvision/models/resnet.py", [tmp_path])
    assert "not a Python file" in editable(str(tmp_path / "nb.ipynb"), [tmp_path])


def test_writes_are_atomic_and_keep_the_file_mode(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("x = 1\n")
    path.chmod(0o640)
    write_atomically(str(path), b"x = 2\n")
    assert path.read_text() == "x = 2\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["model.py"]


def _span(file: SourceFile, line: int, kind: str, nth: int = 0):
    nodes = sorted((n for n in file.positions if type(n).__name__ == kind and file.line_of(n) == line), key=lambda n: file.positions[n].start.column)
    return file.span(nodes[nth])


def test_crlf_line_endings_comments_and_layout_are_kept(tmp_path):
    path = tmp_path / "crlf.py"
    path.write_bytes(b"body = nn.Sequential(\r\n    nn.Linear(4, 4),\t# first\r\n    nn.Dropout(0.1),  # drop\r\n    nn.Tanh()\r\n)\r\n")
    file = SourceFile(str(path), path.read_bytes())
    edited = apply_ops(path.read_bytes(), [O.MoveElement(_span(file, 1, "Call"), 1, 2)])
    # the moved entry keeps its comment (before the parenthesis, as it now has no comma); CRLF and the tab stay
    assert edited == b"body = nn.Sequential(\r\n    nn.Linear(4, 4),\t# first\r\n    nn.Tanh(),\r\n    nn.Dropout(0.1)  # drop\r\n)\r\n"


def test_operations_that_collide_are_refused(tmp_path):
    source = b"y = f(g(x))\n"
    file = SourceFile(str(tmp_path / "a.py"), source)
    call = _span(file, 1, "Call", 1)
    with pytest.raises(EditError):
        apply_ops(source, [O.Unwrap(call, 0), O.Replace(call, "h(x)")])
    with pytest.raises(EditError, match="changed since"):
        apply_ops(source, [O.Unwrap(O.Span(7, 0, 7, 3, "Call"), 0)])


def test_a_line_moved_by_an_edit_is_followed():
    before = b"a\nb\nc\nd\n"
    assert _moved_lines(before, b"a\nnew\nb\nc\nd\n", 3) == {4}
    assert _moved_lines(before, b"a\nb\nC\nd\n", 3) == {3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--unsafe-fixes"], "--unsafe-fixes goes with --fix"),
        (["--diff", "--out", "x"], "--out goes with --fix"),
        (["--fix", "--force"], "--force goes with --fix --out DIR"),
        (["--fix", "--out", "x", "--unsafe-fixes"], "--unsafe-fixes goes with --fix without --out"),
    ],
)
def test_usage_errors(args, message):
    result = invoke(str(GOLDEN / "nrm002_bias" / "before.py"), *args)
    assert result.exit_code == 2 and message in result.stderr
