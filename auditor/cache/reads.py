"""Which files a target's audit read, recorded in its child process: the modules its import ran and the data its
build opened (config.json, a checkpoint), so that the cache can tell when an edit invalidates its result.

A PEP 578 audit hook sees every `open` (`open()`, `os.open`, and the import system reading a module's source or
its cached bytecode); it keeps the paths opened for reading and nothing else. Files of what every result already
depends on by version (the standard library, torch, the auditor and its rules) and pseudo-files are left out.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from auditor.cache import places

WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class ReadRecorder:
    """Collects the paths this process opens for reading from the moment it is installed (an audit hook cannot
    be removed: install it only in a process that ends with the target)."""

    def __init__(self) -> None:
        self.paths: set[str] = set()

    def install(self) -> ReadRecorder:
        sys.addaudithook(self._hook)
        return self

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open":
            return
        try:  # a hook that raises would fail the user's open()
            path, mode, flags = args
            if isinstance(path, int) or path is None or _writes(mode, flags):
                return
            self.paths.add(os.path.abspath(os.fsdecode(path)))
        except Exception:  # noqa: BLE001, S110 - an unusual argument: that file is not recorded
            pass

    def files(self) -> list[str]:
        """The user's files read so far (compiled bytecode stands for its source), sorted: installed packages'
        files count, those of the standard library, torch and the auditor do not."""
        versioned, stdlib, sites = places.versioned(), places.standard_library(), places.site_packages()
        found = set()
        for path in list(self.paths):
            path = _source_of(path)
            if path.startswith(places.PSEUDO) or places.under(path, versioned) or (places.under(path, stdlib) and not places.under(path, sites)):
                continue
            found.add(path)
        return sorted(found)


def _writes(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str):
        return any(letter in mode for letter in "wax+")
    return isinstance(flags, int) and bool(flags & WRITING)


def _source_of(path: str) -> str:
    if path.endswith(".pyc") and f"{os.sep}__pycache__{os.sep}" in path:
        try:
            return importlib.util.source_from_cache(path)
        except ValueError:
            return path
    return path
