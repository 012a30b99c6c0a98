"""[tool.auditor] in pyproject.toml: parsing, validation errors that name key and file, and discovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditor.config import find_pyproject, load_config, validate_settings
from auditor.errors import UsageError
from auditor.findings import Severity
from support import cli


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(body)
    return path


def test_full_table(tmp_path):
    path = write(tmp_path, """
[tool.auditor]
select = ["ALL"]
ignore = ["TRN001"]
fail-on = "warning"
targets = [
  { target = "src/models/net.py:ResNet", kwargs = { depth = 18 }, input = ["2,3,224,224"] },
  { target = "mypkg.models:build_gpt", input = ["long:2,128"] },
  "plain.py",
]
[tool.auditor.per-module-ignores]
"encoder.layers.*" = ["INI001"]
[tool.auditor.settings]
plain-stack-depth = 12
""")
    config = load_config(path)
    assert config.ignore == ["TRN001"] and config.fail_on is Severity.WARNING
    assert [(t.target, t.kwargs, t.inputs) for t in config.targets] == [
        ("src/models/net.py:ResNet", {"depth": 18}, ["2,3,224,224"]),
        ("mypkg.models:build_gpt", {}, ["long:2,128"]),
        ("plain.py", {}, []),
    ]
    assert config.per_module_ignores == {"encoder.layers.*": ["INI001"]}
    assert config.settings == {"plain-stack-depth": 12}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[tool.auditor]\nselekt = ["ALL"]', r"unknown key \[tool.auditor\] 'selekt' in"),
        ('[tool.auditor]\nfail-on = "fatal"', "fail-on in"),
        ('[tool.auditor]\nselect = "ALL"', "select in"),
        ('[tool.auditor]\ntargets = [{ path = "x.py" }]', r"unknown key targets\[0\].path in"),
        ('[tool.auditor]\ntargets = [{ kwargs = {} }]', r"targets\[0\] in .*missing 'target'"),
        ('[tool.auditor]\ndevice = "tpu"', "device in"),
        ("[tool.auditor\n", "invalid TOML"),
    ],
)
def test_malformed_config_names_key_and_file(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(UsageError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_settings_are_validated_against_what_rules_declare():
    defaults = {"plain-stack-depth": 10, "ratio": 3.0, "plot": ""}
    assert validate_settings({"ratio": 5}, defaults, "in x")["ratio"] == 5
    with pytest.raises(UsageError, match="unknown setting 'depth' in x"):
        validate_settings({"depth": 3}, defaults, "in x")
    with pytest.raises(UsageError, match="setting 'plain-stack-depth' in x: expected int"):
        validate_settings({"plain-stack-depth": "deep"}, defaults, "in x")
    with pytest.raises(UsageError, match="expected int"):
        validate_settings({"plain-stack-depth": True}, defaults, "in x")


def test_nearest_pyproject_with_an_auditor_table(tmp_path):
    write(tmp_path, "[tool.auditor]\nfail-on = 'info'\n")
    inner = tmp_path / "pkg" / "sub"
    inner.mkdir(parents=True)
    (tmp_path / "pkg" / "pyproject.toml").write_text("[project]\nname = 'x'\n")  # no [tool.auditor]: skipped
    assert find_pyproject(inner) == tmp_path / "pyproject.toml"


def test_explicit_config_file_may_hold_keys_at_top_level(tmp_path):
    path = tmp_path / "audit.toml"
    path.write_text('ignore = ["DRO"]\n')
    assert load_config(path, explicit=True).ignore == ["DRO"]


def _project(root: Path, ignore: str, fail_on: str) -> Path:
    """A project whose model has a DRO001 warning, configured to ignore `ignore` and fail on `fail_on`."""
    root.mkdir()
    (root / "pyproject.toml").write_text(f'[tool.auditor]\nignore = ["{ignore}"]\nfail-on = "{fail_on}"\n')
    model = root / "net.py"
    model.write_text("import torch.nn as nn\n\nmodel = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Tanh(), nn.Linear(4, 2))\n")
    return model


def test_each_target_uses_the_config_found_from_its_own_folder(tmp_path):
    """As ruff does: run from anywhere, each file gets its project's [tool.auditor]; the exit code is the worst."""
    quiet = _project(tmp_path / "quiet", "DRO001", "warning")
    strict = _project(tmp_path / "strict", "INI", "warning")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    only_quiet = cli(str(quiet), "--format", "json", cwd=elsewhere)
    assert only_quiet.returncode == 0 and '"DRO001"' not in only_quiet.stdout
    both = cli(str(quiet), str(strict), "--format", "json", cwd=elsewhere)
    codes = {r["target"].split("/")[-2]: [f["code"] for f in r["findings"]] for r in json.loads(both.stdout)["results"] if ":" in r["target"]}
    assert codes == {"quiet": [], "strict": ["DRO001"]}
    assert both.returncode == 1  # strict's warning fails under strict's fail-on
    refused = cli(str(quiet), str(strict), "--fix", "--out", str(tmp_path / "fixed"), cwd=elsewhere)
    assert refused.returncode == 2 and "different configurations" in refused.stderr
