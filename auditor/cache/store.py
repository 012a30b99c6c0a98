"""The cache folder: one entry per run key and target, written atomically, trusted only once it proves whole,
current and about what was asked.

Layout, as ruff's: `.audit_cache/` at the project root (marked by a CACHEDIR.TAG and ignored by git through a
`.gitignore` of its own), a folder per auditor release, and in it one file per entry named by its address. An
entry is a line with the SHA-256 of the rest, then the JSON: its format, address and time of writing, the
files the result depends on (`key.Dependency`), the results and what the target's code wrote.

Whatever goes wrong with an entry (missing, truncated, corrupt, of another format or address, a dependency
changed or gone) makes it a miss; whatever goes wrong writing one (a read-only folder, a full disk) leaves the
run's results as they are. Two runs writing the same entry at once each replace it whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from auditor import __version__
from auditor.cache import codec, key
from auditor.findings import TargetResult
from auditor.options import Options
from auditor.targets import Target

FOLDER_NAME = ".audit_cache"
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by auditor.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
GITIGNORE = "# Automatically created by auditor.\n*\n"


@dataclass
class Entry:
    results: list[TargetResult]
    output: str  # what the target's code wrote while it was audited (shown with --verbose)


class ResultCache:
    """Results of one run's targets, looked up before they are audited and stored once they are. `folder_of`
    says which cache folder holds a target's entries."""

    def __init__(self, options: Options, folder_of: Callable[[Target], Path]) -> None:
        self._run = key.run_key(options)
        self._folder_of = folder_of

    def lookup(self, target: Target) -> Entry | None:
        address = key.address(self._run, target)
        try:
            data = _read(self._entry_path(target, address))
            if data.get("format") != key.FORMAT or data.get("address") != address:
                return None
            written = data["written_ns"]
            if not isinstance(written, int) or not isinstance(data["files"], list):
                return None
            if not all(key.Dependency.from_record(record).holds(written) for record in data["files"]):
                return None
            output = data["output"]
            if not isinstance(output, str):
                return None
            return Entry(codec.decode(data["results"]), output)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, target: Target, results: list[TargetResult], output: str, files: Iterable[str | Path], started_ns: int) -> None:
        """Keep `results`, computed from `files` (the target's audit began at `started_ns`); nothing is kept
        when one of them changed meanwhile or cannot be read."""
        dependencies = key.dependencies(files, started_ns)
        if dependencies is None:
            return
        address = key.address(self._run, target)
        data = {
            "format": key.FORMAT, "address": address, "written_ns": time.time_ns(),
            "files": [d.to_record() for d in dependencies],
            "results": codec.encode(results), "output": output,
        }
        with contextlib.suppress(OSError, ValueError, TypeError):
            _write(self._entry_path(target, address), data)

    def _entry_path(self, target: Target, address: str) -> Path:
        return self._folder_of(target) / __version__ / f"{address}.json"


def folder_chooser(named: Path | None, config_file: Path | None) -> Callable[[Target], Path]:
    """Where each target's entries go: the folder named (`--cache-dir`, `AUDIT_CACHE_DIR` or `cache-dir` in the
    configuration); else `.audit_cache` beside the configuration that governs the targets; else at the
    target's own project root."""
    if named is not None:
        return lambda _: named
    if config_file is not None:
        beside = config_file.parent / FOLDER_NAME
        return lambda _: beside
    roots: dict[Path, Path] = {}

    def choose(target: Target) -> Path:
        path = target.path
        start = Path.cwd() if path is None else path if path.is_dir() else path.parent
        if start not in roots:
            roots[start] = project_folder(start) / FOLDER_NAME
        return roots[start]

    return choose


def project_folder(start: Path) -> Path:
    """Where a target's cache folder goes when nothing names one: the nearest folder at or above `start` with a
    pyproject.toml or a .git, else the working directory (as ruff does)."""
    start = start.resolve()
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return Path.cwd()


def _read(path: Path) -> dict[str, Any]:
    checksum, _, body = path.read_bytes().partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != checksum:
        raise ValueError(f"{path}: truncated or corrupt")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not an entry")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    _prepare(path.parent.parent)
    path.parent.mkdir(exist_ok=True)
    body = json.dumps(data, separators=(",", ":")).encode()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _prepare(folder: Path) -> None:
    """The cache folder, made on first use with the markers that keep it out of backups and git."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("CACHEDIR.TAG", CACHEDIR_TAG), (".gitignore", GITIGNORE)):
        marker = folder / name
        if not marker.exists():
            marker.write_text(text)
