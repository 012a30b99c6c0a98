"""Where in the user's code something happened: the innermost frame outside torch, before the tool's own."""

from __future__ import annotations

import functools
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


def _is_passed_over(filename: str, torch_dir: str | None) -> bool:
    """torch's own frames and synthetic ones (fx's generated code, `<frozen importlib>`)."""
    return filename.startswith("<") or (torch_dir is not None and filename.startswith(torch_dir))


def first_user_site(frames: Iterable[Site]) -> Site | None:
    """The first (file, line) of `frames` (innermost first) outside torch, or None when the tool's own code
    comes first: then no user code was involved."""
    torch_dir = _torch_dir()
    for filename, line in frames:
        if filename.startswith(_TOOL_DIR):
            return None
        if not _is_passed_over(filename, torch_dir):
            return display_path(filename), line
    return None


def user_frame(skip: Callable[[FrameType], bool] | None = None, depth: int = 1) -> Site | None:
    """The user's (file, line) among the live callers of the function calling this (`depth` frames up), as
    `first_user_site` decides; `skip` rejects further frames (e.g. a constructor's own `__init__` chain)."""
    frame = user_frame_object(skip, depth + 1)
    return (display_path(frame.f_code.co_filename), frame.f_lineno) if frame is not None else None


def user_frame_object(skip: Callable[[FrameType], bool] | None = None, depth: int = 1) -> FrameType | None:
    """The frame `user_frame` reports, for callers that read more than its place (what it is executing)."""
    torch_dir = _torch_dir()
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_TOOL_DIR):
            return None
        if not _is_passed_over(filename, torch_dir) and not (skip is not None and skip(frame)):
            return frame
        frame = frame.f_back
    return None


def display_path(filename: str) -> str:
    """Paths as users and CI annotations want them: relative to the working directory when inside it."""
    return _relative(filename, os.getcwd())


@functools.lru_cache(maxsize=1024)
def _relative(filename: str, cwd: str) -> str:
    path = Path(filename)
    try:
        return path.resolve().relative_to(Path(cwd).resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)
