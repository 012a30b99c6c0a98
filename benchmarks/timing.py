"""Timing a whole command the way the benchmarks compare processes: wall clock, and the CPU time and peak memory of
every process it started.

`audit` runs each target in a child forked from a server process that outlives the command by a moment; neither
`resource.getrusage(RUSAGE_CHILDREN)` nor `/usr/bin/time` sees those processes unless something waits for them.
`measure` makes this process their subreaper (Linux), so they are re-parented here when the command exits, and
waits for each of them: CPU time is the sum over all of them, peak memory the largest resident set of any one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Measured:
    wall: float  # seconds, from outside the process
    cpu: float  # seconds, user + system, of the command and everything it started
    peak_gib: float  # largest resident set of any one of those processes
    returncode: int
    stdout: str
    stderr: str

    def audited(self) -> Measured:
        """This run, if it ended as an audit may (0, or 1 for findings); else the benchmark stops with its error."""
        if self.returncode not in (0, 1):
            raise SystemExit(f"a benchmarked run failed with exit status {self.returncode}:\n{self.stderr.strip()[-1000:]}")
        return self


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (instead of init), so that they can be waited for."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def measure(command: list[str], cwd: Path | str | None = None, env: dict[str, str] | None = None) -> Measured:
    """Run `command` to its end and that of every process it left behind; see the module's docstring."""
    if not become_subreaper():
        raise SystemExit("benchmarks need Linux (prctl PR_SET_CHILD_SUBREAPER) to count the processes `audit` starts")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=cwd, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        cpu, peak = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        with contextlib.suppress(ChildProcessError):
            while True:  # the orphans it left (a fork server ends once its client has gone)
                _, _, usage = os.wait4(-1, 0)
                cpu, peak = cpu + usage.ru_utime + usage.ru_stime, max(peak, usage.ru_maxrss)
        out.seek(0)
        err.seek(0)
        return Measured(wall, cpu, peak / 2**20, process.returncode, out.read(), err.read())
