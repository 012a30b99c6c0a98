"""Where in the user's code something happened: the innermost frame outside torch, before the tool's own."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import FrameType
from typing import Callable, Iterable

_TOOL_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

Site = tuple[str, int]


def _torch_dir() -> str | None:
    """torch's folder, once torch is imported (never imported just for this)."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(torch, "__file__", None) is None:
        return None
    return os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def first_user_site(frames: Iterable[tuple[str, int]], skip: Callable[[int], bool] | None = None) -> Site | None:
    """The first (file, line) of `frames` (innermost first) outside torch, or None when the tool's own code
    comes first: then no user code was involved. `skip(index)` rejects further frames by position."""
    torch_dir = _torch_dir()
    for index, (filename, line) in enumerate(frames):
        if filename.startswith(_TOOL_DIR):
            return None
        synthetic = filename.startswith("<")
        in_torch = torch_dir is not None and filename.startswith(torch_dir)
        if not (synthetic or in_torch or (skip is not None and skip(index))):
            return display_path(filename), line
    return None


def user_frame(skip: Callable[[FrameType], bool] | None = None, depth: int = 1) -> Site | None:
    """The user's (file, line) among the live caller frames, as `first_user_site` decides."""
    frames: list[FrameType] = []
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    rejected = (lambda i: skip(frames[i])) if skip is not None else None
    return first_user_site(((f.f_code.co_filename, f.f_lineno) for f in frames), rejected)


def display_path(filename: str) -> str:
    """Paths as users and CI annotations want them: relative to the working directory when inside it."""
    path = Path(filename)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)
