"""The command line as users and scripts drive it: exit codes, stdout vs stderr, options, config, subcommands."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from auditor.cli import rules_app
from auditor.locations import display_path
from support import FIXTURES, cli, invoke

MODELS = FIXTURES / "models"
CLEAN = str(FIXTURES / "rules" / "clean_mlp.py")
FAULTY = str(FIXTURES / "rules" / "dro001_modules.py")
runner = CliRunner()


def test_exit_codes_follow_fail_on():
    assert invoke(CLEAN).exit_code == 0
    assert invoke(FAULTY).exit_code == 0  # warnings only, default --fail-on error
    assert invoke(FAULTY, "--fail-on", "warning").exit_code == 1
    assert invoke(str(MODELS / "build_error.py"), CLEAN).exit_code == 2


def test_json_on_stdout_and_one_error_line_per_failed_target_on_stderr():
    result = invoke("--format", "json", str(MODELS / "syntax_error.py"), FAULTY, "missing.py")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    by_target = {r["target"]: r for r in document["results"]}
    assert by_target["missing.py"]["error"] == "missing.py: no such file or directory"
    assert {f["code"] for f in by_target[f"{display_path(FAULTY)}:Head"]["findings"]} == {"DRO001"}
    errors = result.stderr.strip().splitlines()
    assert errors == [
        "audit: error: missing.py: no such file or directory",
        "audit: error: tests/fixtures/models/syntax_error.py:3: syntax error: expected ':'",
    ]
    assert "Traceback" not in result.stderr


def test_verbose_adds_the_traceback():
    result = invoke("--verbose", str(MODELS / "build_error.py"))
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr and "ValueError: bad config" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--select", "XYZ999", CLEAN], "--select: unknown rule selector 'XYZ999'"),
        (["--input", "2x3", CLEAN], "--input '2x3': expected [DTYPE:]D0,D1,..."),
        (["--kwargs", "{depth: 1}", CLEAN], "--kwargs: not valid JSON"),
        (["--format", "xml", CLEAN], "--format 'xml': expected one of text, json, sarif, github"),
        (["--unsafe-fixes", CLEAN], "--unsafe-fixes goes with --fix"),
        (["--fail-on", "fatal", CLEAN], "--fail-on: unknown severity 'fatal'"),
        (["--capture", "jit", CLEAN], "--capture 'jit': expected one of fx, hooks, export"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"audit: error: {message}" or result.stderr.strip().startswith(f"audit: error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_kwargs_and_inputs_reach_the_model():
    result = invoke(f"{MODELS / 'needs_args.py'}:Net", "--kwargs", '{"depth": 2, "width": 8}', "--input", "3,8", "--format", "json")
    assert result.exit_code == 0, result.stderr
    [model] = [r for r in json.loads(result.stdout)["results"] if r["target"].endswith(":Net")]
    assert model["status"] == "ok" and model["capture"]["nodes"] == 4


def test_config_targets_run_when_no_target_is_given(tmp_path, monkeypatch):
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.body = nn.Sequential(nn.Linear(width, width), nn.Dropout(0.5), nn.Sigmoid())

            def forward(self, x):
                return self.body(x)
    """))
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.auditor]
        fail-on = "warning"
        targets = [{ target = "net.py:Net", kwargs = { width = 4 }, input = ["2,4"] }]
    """))
    monkeypatch.chdir(tmp_path)
    result = invoke()
    assert result.exit_code == 1, result.stderr
    assert "net.py:7 warning DRO001 [body.1]" in result.stdout
    monkeypatch.chdir(tmp_path.parent)
    assert invoke().exit_code == 2


def test_rules_and_explain():
    listing = runner.invoke(rules_app, ["rules"])
    assert listing.exit_code == 0 and "DRO001" in listing.stdout and "residual-shape-mismatch" in listing.stdout
    records = json.loads(runner.invoke(rules_app, ["rules", "--format", "json"]).stdout)
    assert {"code": "RES001", "name": "residual-shape-mismatch", "severity": "error", "fixable": True} .items() <= records[[r["code"] for r in records].index("RES001")].items()
    explained = runner.invoke(rules_app, ["explain", "dropout-before-activation"])
    assert explained.exit_code == 0
    for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead", "## Fix", "## References"):
        assert section in explained.stdout
    unknown = runner.invoke(rules_app, ["explain", "XYZ001"])
    assert unknown.exit_code == 2 and "unknown rule 'XYZ001'" in unknown.stderr


def test_end_to_end_subprocess_and_no_torch_import_for_plain_files(tmp_path):
    plain = tmp_path / "utils.py"
    plain.write_text("def f(x):\n    return x + 1\n")
    probe = (
        "import sys\n"
        "from auditor.cli import main\n"
        f"sys.argv = ['audit', {str(plain)!r}]\n"
        "try:\n    main()\n"
        "except SystemExit as exit:\n    print('exit', exit.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "exit 0 False", done.stderr
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == "auditor 0.1.0"


def test_user_text_is_printed_literally_never_as_markup_or_emoji(tmp_path):
    model = tmp_path / "odd.py"
    model.write_text("import torch.nn as nn\n\n\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                     "        raise ValueError('file.py:M: :smile: [bold red]x[/bold red]')\n")
    done = cli(str(model))
    assert done.returncode == 2
    assert "file.py:M: :smile: [bold red]x[/bold red]" in done.stderr
    assert "\U0001f604" not in done.stderr and "\u24c2" not in done.stderr


def test_the_api_checks_selectors_and_settings_like_the_command_line():
    import torch.nn as nn

    import auditor

    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="select: unknown rule selector 'NOPE'"):
        auditor.audit(model, select=["NOPE"])
    with pytest.raises(ValueError, match="ignore: unknown rule selector 'XYZ9'"):
        auditor.audit(model, ignore=["XYZ9"])
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        auditor.audit(model, settings={"nope": 1})
    with pytest.raises(ValueError, match="setting 'max-plain-depth' passed to the API: expected int"):
        auditor.fix(model, settings={"max-plain-depth": "deep"})
    assert auditor.audit(model, select="DRO").findings == []
