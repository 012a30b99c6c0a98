"""Which files `--fix` may edit, and writing them so that the original is never lost: a complete new file or the
old one, never half of either."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable

from auditor.files import installed


def editable(path: str, roots: Iterable[Path]) -> str | None:
    """None when `--fix` may edit `path`, else why not: only Python files of the user's own project (below a
    target's folder or the working directory), never an installed package."""
    resolved = Path(path).resolve()
    if resolved.suffix != ".py":
        return f"{resolved.name} is not a Python file (a notebook is fixed with --fix --out DIR)"
    if installed(resolved):
        return f"{path} belongs to an installed package"
    if not any(resolved.is_relative_to(root) for root in _roots(roots)):
        return f"{path} is outside the audited folders"
    return None


def _roots(roots: Iterable[Path]) -> list[Path]:
    return [Path(r).resolve() for r in roots] + [Path.cwd().resolve()]


def write_atomically(path: str, data: bytes) -> None:
    """Replace the file's content in one step (a temporary file beside it, then a rename), keeping its mode."""
    target = Path(path)
    mode = stat.S_IMODE(target.stat().st_mode)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".audit-fix", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
