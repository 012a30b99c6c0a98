"""Ending every process the user's code started, wherever it went (Linux; elsewhere only process groups).

A process the user's code starts may leave the child's process group (`start_new_session=True`, `setsid`) or
be orphaned (a double fork, or its parent killed by a timeout), and then a `killpg` no longer reaches it. So:
the fork server and each child are *child subreapers* (`prctl(PR_SET_CHILD_SUBREAPER)`): an orphan is adopted
by the nearest one above it instead of by init. While a child lives, everything its target started stays in its
subtree; when it ends, what is left is adopted by the fork server, whose only children of its own are the live
audit children. After each child ends the parent ends the server's other children and all below them
(`end_strays`), and the server ends whatever it still holds when it exits (the parent is gone).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_CHILD_SUBREAPER = 36
_ROUNDS = 64  # stop-and-look-again rounds, for a tree that keeps forking while it is stopped


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux); False where the system has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, parents before their children."""
    tree: dict[int, list[int]] = {}
    for child, parent in _processes():
        tree.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def end_tree(pid: int, *, include_root: bool) -> None:
    """SIGKILL every process below `pid` (and `pid` itself when asked). The tree is stopped first, looking
    again until no new process appears (a stopped process cannot fork, and its children stay below it), then
    killed whole: killing a parent first would hand its children to a subreaper outside the tree."""
    stopped: list[int] = []
    if include_root:
        _signal(pid, signal.SIGSTOP)
        stopped.append(pid)
    for _ in range(_ROUNDS):
        below = [process for process in descendants(pid) if process not in stopped]
        if not below:
            break
        for process in below:
            _signal(process, signal.SIGSTOP)
        stopped.extend(below)
    for process in stopped:
        _signal(process, signal.SIGKILL)


def end_strays(server: int, keep: set[int]) -> None:
    """End the fork server's children that are not live audit children (`keep`): orphans of ended targets,
    with everything below them."""
    for child, parent in _processes():
        if parent == server and child not in keep:
            end_tree(child, include_root=True)


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, number)


def _processes() -> list[tuple[int, int]]:
    """(pid, parent pid) of every process that is not a zombie; [] where there is no /proc."""
    found: list[tuple[int, int]] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": the name may hold spaces and ")"
        if len(fields) >= 2 and fields[0] not in (b"Z", b"X"):
            found.append((int(entry), int(fields[1])))
    return found
