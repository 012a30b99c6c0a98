"""Where a file lives, as the cache sees it: in Python's standard library, in an installed package, in torch or
the auditor (each stands for a version the cache key already has), or among the user's own files."""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig

PSEUDO = ("/proc/", "/sys/", "/dev/")


def under(path: str, folders: tuple[str, ...]) -> bool:
    return path.startswith(folders)


@functools.lru_cache(maxsize=1)
def installed() -> tuple[str, ...]:
    """Python's own prefixes and every site-packages folder: files there are installed, not the user's."""
    paths = sysconfig.get_paths()
    sites = [*site.getsitepackages(), site.getusersitepackages(), paths["purelib"], paths["platlib"]]
    return _folders([sys.prefix, sys.base_prefix, sys.exec_prefix, *sites])


@functools.lru_cache(maxsize=1)
def site_packages() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return _folders([*site.getsitepackages(), site.getusersitepackages(), paths["purelib"], paths["platlib"]])


@functools.lru_cache(maxsize=1)
def standard_library() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return _folders([paths["stdlib"], paths["platstdlib"]])


def versioned() -> tuple[str, ...]:
    """The folders of torch, the auditor and its built-in rules, where imported."""
    folders = []
    for name in ("torch", "auditor", "auditor_rules"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            folders.append(os.path.dirname(module.__file__))
    return _folders(folders)


def _folders(paths: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(os.path.join(os.path.abspath(p), "") for p in paths))
