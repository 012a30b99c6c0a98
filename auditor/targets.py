"""What a TARGET string names, decided without importing anything (the contract's table of target forms)."""

from __future__ import annotations

import enum
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.errors import TargetError
from auditor.manifest import FIXED_MANIFEST, problem

if TYPE_CHECKING:
    from auditor.static.plan import FilePlan

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class Kind(enum.Enum):
    FILE = "file"  # path/model.py, every model in it and the source checks
    FILE_MEMBER = "file-member"  # path/model.py:NAME
    MODULE_MEMBER = "module-member"  # package.module:NAME
    PROGRAM = "program"  # path/program.pt2
    FIXED = "fixed"  # a folder written by --fix, still as written (auditor.manifest)
    PICKLE = "pickle"  # a pickled model: refused unless --trust-pickle
    CONFIG = "config"  # path/config.json: a Hugging Face model config, built without downloading anything


@dataclass
class Target:
    """One thing to audit, with what the user or the config supplied for it."""

    kind: Kind
    text: str  # as the user wrote it, for messages
    path: Path | None = None
    module: str | None = None
    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    plan: FilePlan | None = None  # for a file: what to build and feed, read from the repository (auditor.static.plan)


def parse_target(text: str, *, exclude: list[str] | None = None, base: Path | None = None) -> list[Target]:
    """Expand one TARGET into concrete targets (a directory becomes its Python files).

    Raises TargetError for targets that cannot exist (missing file, unknown form).
    """
    if not text.strip():
        raise TargetError("an empty TARGET names nothing (to audit this folder, pass `.`)")
    raw = text
    member: str | None = None
    location = text
    if ":" in text and not Path(text).exists():
        location, member = text.rsplit(":", 1)
        if not member.isidentifier():
            raise TargetError(f"{raw}: {member!r} is not a Python name")
    path = Path(location) if base is None or Path(location).is_absolute() else base / location
    if member is not None and not location.endswith((".py", ".ipynb")) and _DOTTED.match(location) and not path.exists():
        return [Target(Kind.MODULE_MEMBER, raw, module=location, name=member)]
    if not path.exists():
        raise TargetError(f"{location}: no such file or directory")
    if not path.is_dir() and not path.is_file():
        raise TargetError(f"{location}: not a regular file (a FIFO, socket or device is never read)")
    if path.is_dir():
        if member is not None:
            raise TargetError(f"{raw}: a directory takes no ':NAME'")
        if (path / FIXED_MANIFEST).is_file() and problem(path) is None:  # else an ordinary folder: its manifest is not trusted
            return [Target(Kind.FIXED, raw, path=path)]
        return [Target(Kind.FILE, str(p), path=p) for p in python_files(path, exclude or [])]
    suffix = path.suffix.lower()
    if suffix in (".py", ".ipynb"):
        if member is not None:
            return [Target(Kind.FILE_MEMBER, raw, path=path, name=member)]
        return [Target(Kind.FILE, raw, path=path)]
    if suffix == ".pt2":
        return [Target(Kind.PROGRAM, raw, path=path)]
    if suffix in PICKLE_SUFFIXES:
        return [Target(Kind.PICKLE, raw, path=path, name=member)]
    if suffix == ".json" and member is None:
        return [Target(Kind.CONFIG, raw, path=path)]
    raise TargetError(f"{raw}: not a Python file, a notebook, a .pt2 program, a config.json or a directory")


def python_files(folder: Path, exclude: list[str]) -> list[Path]:
    """Every *.py and *.ipynb regular file below `folder` (never a FIFO, socket or device so named), skipping
    hidden folders (`.ipynb_checkpoints` too) and excluded names, in a stable order. A folder that cannot be read
    (mode 000) is listed as well: reading it fails as this target's error, never a silent miss."""
    found: list[Path] = []

    def excluded(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in exclude)

    for root, folders, files in os.walk(folder, onerror=lambda error: found.append(Path(error.filename))):
        folders[:] = [name for name in folders if not name.startswith(".") and not excluded(name)]
        found.extend(Path(root, name) for name in files
                     if name.endswith((".py", ".ipynb")) and not excluded(name) and Path(root, name).is_file())
    return sorted(found)
