"""Reading the user's files: regular files only. Opening a FIFO for reading waits for a writer forever, and a
device can be endless, so whatever a target or a folder names is opened without blocking and read only when it
is a regular file. `installed` tells the user's files from installed code.

`--diff` audits the user's files as its edits would leave them without writing them: `unwritten(contents)` has
every read here, every import of those files and `linecache` see the edited content instead of the disk's."""

from __future__ import annotations

import contextlib
import importlib.machinery
import io
import linecache
import os
import stat
import sys
import sysconfig
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

_unwritten: dict[str, bytes] = {}  # real path -> the content its reads and imports see (--diff)

# Folders that hold installed packages: pip's and conda's site-packages, Debian's dist-packages.
PACKAGE_FOLDERS = ("site-packages", "dist-packages")


def open_regular(path: Path, *, follow_links: bool = True) -> BinaryIO:
    """`path` opened for binary reading; OSError when it is not a regular file (or, without `follow_links`, a
    symbolic link)."""
    if _unwritten and os.path.realpath(path) in _unwritten:
        return io.BytesIO(_unwritten[os.path.realpath(path)])
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def read_text(path: Path) -> str:
    """The text of a regular file, undecodable bytes replaced (OSError for anything else)."""
    with open_regular(path) as handle:
        return handle.read().decode("utf-8", errors="replace")


def read_bytes(path: Path | str) -> bytes:
    """The bytes of a regular file (OSError for anything else)."""
    with open_regular(Path(path)) as handle:
        return handle.read()


def installed(path: str | os.PathLike[str]) -> bool:
    """Whether a file is installed code, not the user's: it lies (symbolic links resolved) in a site-packages or
    dist-packages folder, or in Python's standard library."""
    real = os.path.realpath(path)
    if any(part in PACKAGE_FOLDERS for part in real.split(os.sep)):
        return True
    paths = sysconfig.get_paths()
    return any(real.startswith(os.path.realpath(paths[key]) + os.sep) for key in ("stdlib", "platstdlib") if paths.get(key))


@contextlib.contextmanager
def unwritten(contents: Mapping[str, bytes]) -> Iterator[None]:
    """While inside, the files named in `contents` (real paths) read and import as that content: the tool's reads
    (`open_regular`), the import system (a finder ahead of the others, with no bytecode cached) and `linecache`
    (tracebacks, `inspect`, the lines findings quote)."""
    if not contents:
        yield
        return
    saved = dict(_unwritten)
    _unwritten.update(contents)
    finder = _UnwrittenFinder()
    sys.meta_path.insert(0, finder)
    for path, data in contents.items():
        _cache_lines(path, data)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for path in contents:
            linecache.cache.pop(path, None)
        _unwritten.clear()
        _unwritten.update(saved)


def unwritten_loader(name: str, path: Path) -> importlib.machinery.SourceFileLoader | None:
    """The loader importing `path` as its unwritten content, or None when it has none."""
    return _UnwrittenLoader(name, str(path)) if os.path.realpath(path) in _unwritten else None


class _UnwrittenFinder:
    """Finds modules as the path finder does; one whose file has unwritten content gets the loader of it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.origin is None or os.path.realpath(spec.origin) not in _unwritten:
            return None
        spec.loader = _UnwrittenLoader(name, spec.origin)
        return spec


class _UnwrittenLoader(importlib.machinery.SourceFileLoader):
    """The unwritten content instead of the file's, and no bytecode: the cached one is the disk's."""

    def get_data(self, path: str) -> bytes:
        data = _unwritten.get(os.path.realpath(path))
        if data is None:
            return super().get_data(path)
        _cache_lines(path, data)
        return data

    def path_stats(self, path: str) -> Mapping[str, Any]:
        if os.path.realpath(path) in _unwritten:
            raise OSError("unwritten content: no bytecode")  # SourceLoader then compiles the source and caches none
        return super().path_stats(path)


def _cache_lines(path: str, data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    linecache.cache[path] = (len(text), None, text.splitlines(True), path)  # no mtime: checkcache keeps it
