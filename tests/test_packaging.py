"""The wheel ships every module on disk: an installed `audit` imports what the checkout imports.

The wheel is built from a copy of the sources (offline, with this environment's setuptools) so the checkout gets no
build/ or egg-info from the test. CI installs the same wheel into a fresh venv and runs the README demo and the
pre-commit hook from it (.ci/run).
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SOURCES = {"auditor": "auditor", "rules": "auditor_rules"}  # folder in the checkout -> package in the wheel
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    tree = tmp_path_factory.mktemp("tree")
    for name in BUILD_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tree / name)
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(tree)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("auditor-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_ships_every_source_file_on_disk(wheel: zipfile.ZipFile) -> None:
    on_disk = {
        f"{package}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, package in SOURCES.items()
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    shipped = {name for name in wheel.namelist() if ".dist-info/" not in name}
    assert not on_disk - shipped, f"the wheel lacks {sorted(on_disk - shipped)}"
    assert not shipped - on_disk, f"the wheel ships files the checkout lacks: {sorted(shipped - on_disk)}"


def test_the_wheel_declares_the_command_and_the_builtin_rule_pack(wheel: zipfile.ZipFile) -> None:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(name).decode())
    assert entry_points["console_scripts"]["audit"] == "auditor.cli:main"
    assert entry_points["auditor.rules"]["builtin"] == "auditor_rules"
