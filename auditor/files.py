"""Reading the user's files: regular files only. Opening a FIFO for reading waits for a writer forever, and a
device can be endless, so whatever a target or a folder names is opened without blocking and read only when it
is a regular file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


def open_regular(path: Path, *, follow_links: bool = True) -> BinaryIO:
    """`path` opened for binary reading; OSError when it is not a regular file (or, without `follow_links`, a
    symbolic link)."""
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
