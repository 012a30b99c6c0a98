"""The manifest of a folder written by `--fix --out`, and whether a folder still is one (no torch).

The manifest records the sha256 of every file --fix wrote in the folder. A folder is an intact --fix output only
while each of those files has that content and nothing else was added (Python's `__pycache__` aside, which
importing the folder's model.py writes); a folder of several models lists them, and each of them must be
intact too. Only such a folder is audited as a fixed model (`audit DIR`), and only such a folder is replaced by
`--force`. Anyone can write matching hashes, so this proves that nothing changed since it was written, not who
wrote it: what the folder's code does when imported is still held to the guard of a folder audit
(`auditor.guard`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from auditor.files import open_regular

FIXED_MANIFEST = "auditor-fixed.json"
FORMAT = 3  # 3: "files" maps each file to its sha256 (2 listed names only)
CACHES = frozenset({"__pycache__"})  # what importing the folder's code adds to it


def manifest_files(folder: Path) -> dict[str, str]:
    """Every file --fix wrote in `folder` (the manifest aside) -> its sha256, for the manifest."""
    return {path.name: file_hash(path) for path in sorted(folder.iterdir()) if path.name != FIXED_MANIFEST and path.is_file()}


def file_hash(path: Path) -> str:
    """The sha256 of a regular file (OSError for anything else, a symbolic link included)."""
    digest = hashlib.sha256()
    with open_regular(path, follow_links=False) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_entry(folder: Path) -> dict[str, Any]:
    """What the manifest of a folder `problem` found intact says to load: {"module", "factory", "inputs"} for
    one model, {"models": [...]} for several. ValueError when it says something else."""
    manifest = _read(folder)
    files, models = manifest.get("files", {}), manifest.get("models")
    if isinstance(models, list) and all(isinstance(m, str) and _plain(m) for m in models):
        return {"models": models}
    module, factory, inputs = manifest.get("module"), manifest.get("factory"), manifest.get("inputs", [])
    if not (isinstance(module, str) and module.endswith(".py") and module in files and isinstance(factory, str) and factory.isidentifier()):
        raise ValueError(f"{FIXED_MANIFEST} names no module of the folder and factory")
    if not (isinstance(inputs, list) and all(isinstance(spec, str) for spec in inputs)):
        raise ValueError(f"{FIXED_MANIFEST} has malformed inputs")
    return {"module": module, "factory": factory, "inputs": inputs}


def problem(folder: Path) -> str | None:
    """None when `folder` is a --fix output whose files are all as --fix wrote them, else what is wrong."""
    if folder.is_symlink() or not folder.is_dir():
        return "is a symbolic link" if folder.is_symlink() else "is not a folder"
    try:
        manifest = _read(folder)
        if not isinstance(manifest, dict) or not str(manifest.get("tool", "")).startswith("auditor "):
            raise ValueError
    except (OSError, ValueError):
        return f"was not written by --fix (no {FIXED_MANIFEST} marker recording its files)"
    files, models = manifest.get("files"), manifest.get("models", [])
    if manifest.get("format") != FORMAT or not isinstance(files, dict) or not isinstance(models, list):
        return f"was not written by this version of --fix ({FIXED_MANIFEST} records no file hashes)"
    names = [*files, *models]
    if not all(isinstance(name, str) and _plain(name) for name in names) or not all(isinstance(h, str) for h in files.values()):
        return f"has a malformed {FIXED_MANIFEST}"
    extra = sorted(p.name for p in folder.iterdir() if p.name not in names and p.name != FIXED_MANIFEST and p.name not in CACHES)
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        return f"holds files --fix did not write ({shown})"
    changed = [name for name, digest in files.items() if not _same(folder / name, digest)]
    if changed:
        return f"has files changed since --fix wrote them ({', '.join(changed[:3])})"
    for model in models:
        inner = problem(folder / model)
        if inner is not None:
            return f"its folder {model} {inner}"
    return None


def _read(folder: Path) -> Any:
    """The parsed manifest of `folder` (OSError unless it is a regular file, ValueError unless it is JSON)."""
    with open_regular(folder / FIXED_MANIFEST, follow_links=False) as handle:
        return json.loads(handle.read())


def _same(path: Path, digest: str) -> bool:
    try:
        return file_hash(path) == digest
    except OSError:
        return False


def _plain(name: str) -> bool:
    """A name inside the folder itself: no separator, not `.` or `..`, not the manifest."""
    return bool(name) and name not in (".", "..", FIXED_MANIFEST) and "/" not in name and "\\" not in name and "\0" not in name
