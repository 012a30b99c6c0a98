"""The child side of process isolation: one target's models audited in a process of their own.

`auditor.runner` forks one child per target from a server process that has imported this module (and with it
torch and the auditor) once, so every target starts from the same pristine state and no child pays torch's
import. Whatever the user's code does (prints, exits, hangs, patches torch) stays in its child. The child:

- runs in a process group of its own (a timeout kills what the user's code started too) and dies with the
  parent, even when the parent is killed outright;
- writes nothing to the run's stdout or stderr: file descriptors 1 and 2 go to a pipe the parent reads;
- tells the parent what it starts ("importing", "building Net", "capturing Net"), so a death or a timeout can be
  named, and sends each result as soon as it is done, then "done";
- stages `--fix` output through the parent (`ParentStaging`), which alone commits `--out`.

Messages on the channel, child to parent: ("phase", text), ("result", TargetResult), ("stage", label),
("discard", folder), ("crash", message, traceback or None), ("read", [the files the audit read]), ("done",). Parent to child, in answer to "stage":
("staged", folder) or ("error", message).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import traceback
from multiprocessing import parent_process
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch  # noqa: F401 - imported here so that the fork server holds it for every child

import auditor.capture.fx  # noqa: F401 - the modules every audit needs, loaded once in the fork server
import auditor.capture.hooks  # noqa: F401
import auditor.fixing.codegen  # noqa: F401 - every audit judges which findings --fix could fix (plan, codegen)
import auditor.fixing.plan  # noqa: F401
import auditor.prepare  # noqa: F401
from auditor.cache.reads import ReadRecorder
from auditor.engine import Engine
from auditor.errors import TargetError, first_line
from auditor.fixing.writer import OutputFolder
from auditor.options import Options
from auditor.rule import all_rules
from auditor.targets import Target

all_rules()  # the rule catalog (built-in and third-party packs), imported once in the fork server
with contextlib.suppress(ImportError):  # auditor.rng saves numpy's random state (numpy loads it on first use)
    import numpy.random  # noqa: F401


def audit_in_child(target: Target, options: Options, channel: Connection, output: Connection, environ: dict[str, str], cwd: str) -> None:
    """The child's whole life: isolate, audit the target's models, report. A failure of the user's code that
    kills the process (os._exit, a signal, a crash) ends it without "done"; the parent names the phase."""
    if hasattr(os, "setpgrp"):  # POSIX: a group of its own, which a timeout kills whole
        os.setpgrp()
    _die_with_parent()
    _redirect_output(output)
    os.environ.clear()
    os.environ.update(environ)  # the parent's environment and working directory now, not the fork server's
    os.chdir(cwd)
    reads = ReadRecorder().install()  # what the result depends on, for the parent's cache
    staging = ParentStaging(options.fix.out, channel) if options.fix is not None and options.fix.out is not None else None
    engine = Engine(options, progress=lambda text: channel.send(("phase", text)), output=staging)
    try:
        for result in engine.audit_models(target):
            channel.send(("result", result))
    except Exception as exc:  # noqa: BLE001 - a bug of the tool's outside any one model's guard
        details = traceback.format_exc() if options.verbose else None
        channel.send(("crash", f"internal error: {type(exc).__name__}: {first_line(exc)}", details))
    sys.stdout.flush()
    sys.stderr.flush()
    channel.send(("read", reads.files()))
    channel.send(("done",))


class ParentStaging(OutputFolder):
    """The child's view of `--out`: each fixed model's folder is staged by the parent, asked for over the
    channel, so that children running at once share one staging area and the parent commits it once."""

    def __init__(self, out: Path, channel: Connection) -> None:
        super().__init__(out)
        self.channel = channel

    def stage(self, label: str) -> Path:
        self.channel.send(("stage", label))
        answer, value = self.channel.recv()
        if answer == "error":
            raise TargetError(value)
        return Path(value)

    def discard(self, folder: Path) -> None:
        self.channel.send(("discard", str(folder)))


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
        if hasattr(os, "killpg"):
            os.killpg(0, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="auditor-parent-watch", daemon=True).start()
