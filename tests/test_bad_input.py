"""Every bad input is one usage-error line (exit 2), never an internal error or a traceback, and what the
process is given (a closed stdout, an unreadable folder, a file name that is not UTF-8) is handled the same way.

Options and config values are checked in-process (through the command's Typer app); what depends on the process
itself (its stdout, its permissions, its file names) runs `audit` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditor.cli import audit_app
from support import FIXTURES, invoke

CLEAN = str(FIXTURES / "rules" / "clean_mlp.py")
# A source check's finding (TRN001, info) in a file that imports nothing: `audit` runs it without torch, quickly.
TRAINING = "def train(nn):\n    return nn.CrossEntropyLoss()\n"

NESTED_INPUT = "(" * 5000 + "2,3" + ")" * 5000
NESTED_KWARGS = '{"a": ' + "[" * 30000 + "]" * 30000 + "}"


def one_usage_error(result_code: int, stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert result_code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("audit: error: "), stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    assert len(lines[0]) < 300, "a usage error quotes a huge value by its start and length"
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "2," + "9" * 5000], "a dimension with more than 18 digits"),
        (["--input", NESTED_INPUT], "tuples nested more than 32 levels deep"),
        (["--input", ",".join(["1"] * 5000)], "5000 dimensions, more than 16"),
        (["--kwargs", NESTED_KWARGS], "--kwargs: nested more than 32 levels deep"),
        (["--kwargs", '{"a": ' + "[" * 40 + "]" * 40 + "}"], "--kwargs: nested more than 32 levels deep"),
        (["--kwargs", '{"a": ' + "9" * 5000 + "}"], "--kwargs: a number with more than 4300 digits"),
        (["--max-memory", "9" * 400], "more than 18 digits"),
        (["--max-memory", "9" * 400 + ".5GiB"], "more than 18 digits"),
        (["--timeout", "1e7"], "--timeout 1e+07: expected seconds from 0 (no limit) to 604800 (a week)"),
        (["--timeout", "inf"], "--timeout inf: expected seconds"),
        (["--timeout", "nan"], "--timeout nan: expected seconds"),
        (["--probe", "--clip-norm", "inf"], "--clip-norm inf: expected a positive number"),
    ],
    ids=["input-digits", "input-nesting", "input-dims", "kwargs-nesting", "kwargs-41-deep", "kwargs-digits", "max-memory-digits",
         "max-memory-digits-unit", "timeout-1e7", "timeout-inf", "timeout-nan", "clip-norm-inf"],
)
def test_absurd_option_values_are_usage_errors(args: list[str], message: str) -> None:
    result = invoke(*args, CLEAN)
    assert message in one_usage_error(result.exit_code, result.stderr)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("timeout = inf", "timeout in {file}: inf: expected seconds from 0 (no limit) to 604800"),
        ("timeout = 1e7", "timeout in {file}: 1e+07: expected seconds"),
        (f'max-memory = "{"9" * 400}"', "max-memory in {file}: '9999"),
        ("targets = [{ target = \"m.py\", kwargs = { a = " + "[" * 40 + "]" * 40 + " } }]", "targets[0].kwargs in {file}: nested more than 32"),
        ("timeout = " + "9" * 5000, "{file}: invalid TOML: a number with more than 4300 digits"),
        ("select = " + "[" * 5000 + "]" * 5000, "{file}: invalid TOML: arrays or tables nested too deeply"),
        ('baseline = "a\\u0000b"', "baseline in {file}: a NUL character"),
    ],
    ids=["timeout-inf", "timeout-1e7", "max-memory-digits", "kwargs-nesting", "toml-digits", "toml-nesting", "nul"],
)
def test_absurd_config_values_are_usage_errors_naming_the_file(tmp_path: Path, table: str, message: str, monkeypatch) -> None:
    config = tmp_path / "pyproject.toml"
    config.write_text(f"[tool.auditor]\n{table}\n")
    (tmp_path / "m.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(audit_app, ["m.py"], env={"NO_COLOR": "1", "COLUMNS": "200"})
    assert message.format(file=config.resolve()) in one_usage_error(result.exit_code, result.stderr)


def test_an_empty_target_is_an_error_not_the_working_directory() -> None:
    result = invoke("", CLEAN)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["audit: error: an empty TARGET names nothing (to audit this folder, pass `.`)"]


@pytest.mark.parametrize("manifest", ['{"models": ["."]}', '{"models": ["../elsewhere"]}', '{"models": 5}', "[1]",
                                      '{"module": "../x.py", "factory": "build"}', '{"module": "m.py", "factory": "f", "inputs": "2,3"}'])
def test_a_stray_or_malformed_manifest_is_never_an_internal_error(tmp_path: Path, manifest: str, monkeypatch) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "auditor-fixed.json").write_text(manifest)
    (folder / "train.py").write_text(TRAINING)
    monkeypatch.chdir(tmp_path)
    result = invoke("d", "--fail-on", "info")
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    if result.exit_code == 2:  # refused as a malformed --fix output, in one line naming the manifest
        assert "auditor-fixed.json" in one_usage_error(result.exit_code, result.stderr)
    else:  # or not taken for a --fix output at all: the folder is audited as any other
        assert result.exit_code == 1 and "TRN001" in result.stdout, result.stdout + result.stderr


# --- the process: stdout, permissions, file names ------------------------------------------------------------------


def test_a_closed_stdout_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAINING)
    done = subprocess.run([sys.executable, "-m", "auditor", "train.py", "--format", "json"], cwd=tmp_path, stderr=subprocess.PIPE,
                          text=True, timeout=120, preexec_fn=lambda: os.close(1))  # `audit ... >&-`
    assert "stdout is closed" in one_usage_error(done.returncode, done.stderr)


@pytest.mark.parametrize("args", [["train.py", "--fail-on", "info"], ["train.py", "--fail-on", "info", "--format", "json"], ["rules", "--format", "json"]],
                         ids=["text", "json", "rules"])
def test_a_reader_that_goes_away_ends_nothing_and_keeps_the_exit_code(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "train.py").write_text(TRAINING)
    process = subprocess.Popen([sys.executable, "-m", "auditor", *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "NO_COLOR": "1"})
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # `audit ... | head -c0`: every write to stdout now fails with EPIPE
    stderr = process.stderr.read().decode()
    code = process.wait(timeout=120)
    assert code == (0 if args[0] == "rules" else 1), stderr  # the finding still fails the run; `audit rules` is fine
    assert stderr == "", stderr


def _without_permissions() -> list[str] | None:
    """A command prefix that runs without the right to read what mode 000 forbids, or None where there is none
    (as root, reading needs CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, which setpriv can drop)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if setpriv else None


def test_an_unreadable_folder_is_that_targets_error_and_the_others_still_run(tmp_path: Path) -> None:
    prefix = _without_permissions()
    if prefix is None:
        pytest.skip("running as root without setpriv: mode 000 does not stop reading")
    locked, partly = tmp_path / "locked", tmp_path / "partly"
    (locked / "inner").mkdir(parents=True)
    (partly / "sub").mkdir(parents=True)
    (partly / "train.py").write_text(TRAINING)
    (partly / "sub" / "hidden.py").write_text(TRAINING)
    folders = (locked, partly / "sub")
    for folder in folders:
        folder.chmod(0)
    try:
        done = subprocess.run([*prefix, sys.executable, "-m", "auditor", "locked", "locked/inner/x.py", "partly", "--format", "json"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert done.returncode == 2 and "internal error" not in done.stderr
    assert sorted(done.stderr.strip().splitlines()) == ["audit: error: locked/inner/x.py: cannot be read: Permission denied",
                                                        "audit: error: locked: cannot be read: Permission denied",
                                                        "audit: error: partly/sub: cannot be read: Permission denied"]
    results = {r["target"]: r for r in json.loads(done.stdout)["results"]}
    assert [f["code"] for f in results["partly/train.py"]["findings"]] == ["TRN001"]


def test_a_file_name_that_is_not_utf8_keeps_sarif_baselines_and_the_terminal_working(tmp_path: Path, monkeypatch) -> None:
    name = os.fsdecode(b"m\xff.py")  # the surrogate escape Python gives such a name
    (tmp_path / name).write_text(TRAINING)
    monkeypatch.chdir(tmp_path)
    sarif = invoke(name, "--format", "sarif")
    assert sarif.exit_code == 0, sarif.stderr
    (result,) = json.loads(sarif.stdout)["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "m%FF.py"
    assert len(result["partialFingerprints"]["auditorFingerprint/v1"]) == 32
    written = invoke(name, "--write-baseline", "baseline.json")
    assert written.exit_code == 0 and "recorded 1 finding" in written.stderr, written.stderr
    assert json.loads(Path("baseline.json").read_text())["findings"][0]["target"] == name  # the name, losslessly
    again = invoke(name, "--baseline", "baseline.json", "--fail-on", "info")
    assert again.exit_code == 0 and "1 finding hidden by the baseline" in again.stdout, again.stdout + again.stderr
    for output_format in ("text", "github"):
        shown = invoke(name, "--format", output_format, "--fail-on", "info")
        assert shown.exit_code == 1 and "m\\xff.py" in shown.stdout and name not in shown.stdout, shown.stdout + shown.stderr


ESCAPES = textwrap.dedent('''
    import torch.nn as nn

    NAME = "drop\\x1b[2J\\x1b]0;pwned\\x1b\\\\"


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module(NAME, nn.Dropout(0.1))
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(getattr(self, NAME)(x))


    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            raise ValueError("bad \\x1b[31mvalue\\u202e")
''')


@pytest.mark.parametrize("output_format", ["text", "github"])
def test_escape_sequences_in_user_names_and_messages_reach_the_terminal_escaped(tmp_path: Path, output_format: str, monkeypatch) -> None:
    (tmp_path / "evil.py").write_text(ESCAPES)
    monkeypatch.chdir(tmp_path)
    done = invoke("evil.py:Net", "evil.py:Broken", "--input", "2,4", "--format", output_format)
    assert done.exit_code == 2
    assert "\x1b" not in done.stdout + done.stderr and "\u202e" not in done.stdout + done.stderr
    assert "drop\\x1b[2J\\x1b]0;pwned\\x1b\\" in done.stdout and "DRO001" in done.stdout
    assert "bad \\x1b[31mvalue\\u202e" in (done.stderr if output_format == "text" else done.stdout)
