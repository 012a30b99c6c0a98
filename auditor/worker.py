"""The child side of process isolation: one target's models audited in a process of their own.

`auditor.runner` forks one child per target from a server process that has imported this module (and with it
torch and the auditor) once, so every target starts from the same pristine state and no child pays torch's
import. Whatever the user's code does (prints, exits, hangs, patches torch) stays in its child. The child:

- runs in a process group of its own (a timeout kills what the user's code started too), adopts what the user's
  code orphans (a subreaper, `auditor.reaping`: all of it is ended when the target is) and dies with the
  parent, even when the parent is killed outright;
- writes nothing to the run's stdout or stderr: file descriptors 1 and 2 go to a pipe the parent reads;
- tells the parent what it starts ("importing", "building Net", "capturing Net"), so a death or a timeout can be
  named, and sends each result as soon as it is done, then "done", and exits at once: a thread the user's code
  left running (a non-daemon one too) does not hold the run, and no `atexit` or `__del__` of theirs runs;
- stages `--fix` output through the parent (`ParentStaging`), which alone commits `--out`.

Messages on the channel, child to parent: ("phase", text), ("result", TargetResult), ("stage", label),
("discard", folder), ("crash", message, traceback or None), ("read", [the files the audit read]), ("done",).
Parent to child, in answer to "stage": ("staged", folder) or ("error", message).
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing.util
import os
import signal
import sys
import tempfile
import threading
import traceback
from multiprocessing import parent_process
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import NoReturn

import torch  # noqa: F401 - imported here so that the fork server holds it for every child

import auditor.capture.fx  # noqa: F401 - the modules every audit needs, loaded once in the fork server
import auditor.capture.hooks  # noqa: F401
import auditor.fixing.codegen  # noqa: F401 - every audit judges which findings --fix could fix (plan, codegen)
import auditor.fixing.plan  # noqa: F401
import auditor.prepare  # noqa: F401
from auditor import reaping
from auditor.cache.reads import ReadRecorder
from auditor.engine import Engine
from auditor.errors import TargetError, first_line
from auditor.files import unwritten
from auditor.fixing.writer import OutputFolder
from auditor.guard import Guard
from auditor.options import Options
from auditor.rule import all_rules
from auditor.targets import Kind, Target

# Targets whose code nobody named: a whole file, a folder's files, a fixed folder. Their code runs under the guard
# (auditor.guard); `file.py:NAME` and `package.module:NAME` are the user's consent to run it as it is.
GUARDED = frozenset({Kind.FILE, Kind.FIXED})

all_rules()  # the rule catalog (built-in and third-party packs), imported once in the fork server
with contextlib.suppress(ImportError):  # auditor.rng saves numpy's random state (numpy loads it on first use)
    import numpy.random  # noqa: F401


def audit_in_child(target: Target, options: Options, channel: Connection, output: Connection, environ: dict[str, str],
                   cwd: str, scratch: str) -> None:
    """The child's whole life: isolate, audit the target's models, report. A failure of the user's code that
    kills the process (os._exit, a signal, a crash) ends it without "done"; the parent names the phase.
    `scratch`: a folder of its own, which the parent removes when it ends."""
    if hasattr(os, "setpgrp"):  # POSIX: a group of its own, which a timeout kills whole
        os.setpgrp()
    reaping.become_subreaper()
    for name in ("SIGTERM", "SIGHUP"):  # the fork server ignores them; the user's code gets the defaults
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    _die_with_parent()
    _redirect_output(output)
    os.environ.clear()
    os.environ.update(environ)  # the parent's environment and working directory now, not the fork server's
    os.chdir(cwd)
    reads = ReadRecorder().install()  # what the result depends on, for the parent's cache
    guard = Guard(target.path, writable=[Path(scratch)]) if target.kind in GUARDED else None
    _use_scratch(scratch, guarded=guard is not None)
    staging = ParentStaging(options.fix.out, channel, guard) if options.fix is not None and options.fix.out is not None else None

    def progress(text: str) -> None:
        if guard is not None:
            guard.phase = text
        channel.send(("phase", text))

    engine = Engine(options, progress=progress, output=staging, guard=guard)
    if guard is not None:
        guard.install()  # before the first import of the user's code
    try:
        with unwritten(options.fix.unwritten if options.fix is not None else {}):  # --diff's later rounds
            for result in engine.audit_models(target):
                channel.send(("result", result))
    except Exception as exc:  # noqa: BLE001 - a bug of the tool's outside any one model's guard
        details = traceback.format_exc() if options.verbose else None
        channel.send(("crash", f"internal error: {type(exc).__name__}: {first_line(exc)}", details))
    _flush()
    channel.send(("read", reads.files()))
    channel.send(("done",))
    _exit()


def _exit() -> NoReturn:
    """End the process now (what the parent needed has been sent): no waiting for threads the user's code
    started, no `atexit` handlers of theirs. multiprocessing's own finalizers still run (a semaphore a library
    made is unlinked; otherwise the run's resource tracker warns of it on the user's terminal)."""
    with contextlib.suppress(Exception):
        multiprocessing.util._run_finalizers(0)
    _flush()
    os._exit(0)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a stream the user's code replaced or closed
            stream.flush()


class ParentStaging(OutputFolder):
    """The child's view of `--out`: each fixed model's folder is staged by the parent, asked for over the
    channel, so that children running at once share one staging area and the parent commits it once."""

    def __init__(self, out: Path, channel: Connection, guard: Guard | None = None) -> None:
        super().__init__(out)
        self.channel = channel
        self.guard = guard

    def stage(self, label: str) -> Path:
        self.channel.send(("stage", label))
        answer, value = self.channel.recv()
        if answer == "error":
            raise TargetError(value)
        if self.guard is not None:
            self.guard.allow_writes(Path(value))
        return Path(value)

    def discard(self, folder: Path) -> None:
        self.channel.send(("discard", str(folder)))


def _use_scratch(scratch: str, guarded: bool) -> None:
    """Temporary files (`tempfile`, torch's caches under it) and matplotlib's cache go to the child's own
    folder: they vanish with it, and they are the writes a guarded child may make. A guarded child's torch
    compile caches go there too, wherever the environment put them (torch makes them while the user's forward
    is traced)."""
    os.environ["TMPDIR"] = scratch
    os.environ["MPLCONFIGDIR"] = os.path.join(scratch, "matplotlib")
    tempfile.tempdir = scratch
    if guarded:
        for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
            os.environ[name] = os.path.join(scratch, name.lower())


def _redirect_output(output: Connection) -> None:
    """Point file descriptors 1 and 2 at the parent's pipe, so prints, C-level writes and torch's warnings
    from the user's code never reach the run's output. Line-buffered, so a sudden death loses little."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os.dup2(output.fileno(), 1)
    os.dup2(output.fileno(), 2)
    output.close()
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None:  # the parent ran with that stream closed
            setattr(sys, name, open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False))
        else:
            stream.reconfigure(line_buffering=True)
    faulthandler.enable(sys.stderr, all_threads=False)  # a crash in C code leaves the Python stack in the captured output


def _die_with_parent() -> None:
    """If the parent dies (even by SIGKILL), end this process group: a hung model must not outlive the run."""
    parent = parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        reaping.end_tree(os.getpid(), include_root=False)
        if hasattr(os, "killpg"):
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="auditor-parent-watch", daemon=True).start()
