"""Targets audited on a Dask distributed cluster: `audit --executor dask [--scheduler ADDRESS]`.

The runner keeps everything but a target's model half in the `audit` process (cache lookups and stores, source
checks, target order, shown output), exactly as with `--jobs`; each target whose models must be imported becomes
one task. On a worker the task runs `runner.audit_models_here`: a child process forked from the worker's own
fork server, with the same guard, `--timeout` and memory budget (that machine's) as a local child, in the
`audit` process's working directory, so results name files as they do locally. Workers therefore need the
targets at the same paths (a shared file system) and the same auditor, torch and rule packs installed.

Without `--scheduler`, the address Dask is configured with (`DASK_SCHEDULER_ADDRESS`, as `Client()` reads it) is
used; without either, a `LocalCluster` is started: `--jobs` single-threaded worker processes (Dask's default count
without it). Nothing connects until a target needs a worker, so a run answered from the cache starts no
cluster, nor imports `distributed` (0.5 s of CPU). Interrupting the run cancels the targets not yet started and
sets the run's stop `Event`, which each running target's runner on a worker asks every `STOP_POLL` seconds: it
then kills its child, as Ctrl-C does locally.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import sys
import uuid
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from auditor.errors import UsageError, first_line
from auditor.findings import TargetResult
from auditor.options import Options
from auditor.runner import Child, Runner, Slot, audit_models_here

if TYPE_CHECKING:
    from distributed import Client, Event, Future, LocalCluster


class WorkerUnfit(Exception):
    """A worker that cannot audit a target the way this machine would: the target's error, with the remedy."""


class DaskExecutor:
    """Every waiting target submitted at once; the scheduler spreads them over its workers' threads."""

    capacity = sys.maxsize

    def __init__(self, scheduler: str | None = None, workers: int | None = None) -> None:
        self.scheduler = scheduler
        self.workers = workers
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self.children = 0  # how many the current run starts
        self.stop: Event | None = None  # set when the run is interrupted: running targets' children are killed

    def prepare(self, options: Options, children: int) -> None:
        from distributed import Event

        self.children = children
        if self.client is None:
            self.client = self._connect()
        if self.stop is None:  # the first run, or one after an interrupted run
            self.stop = Event(f"audit-stop-{uuid.uuid4().hex}", client=self.client)

    def interrupt(self) -> None:
        """Tell the workers' runners to kill this run's children (once; a cluster already gone has none)."""
        if self.stop is not None:
            with contextlib.suppress(Exception):  # noqa: BLE001 - the connection may be what failed
                self.stop.set()
            self.stop = None

    def start(self, runner: Runner, slot: Slot) -> Child:
        return _Task(self, runner, slot)

    def close(self) -> None:
        self.stop = None
        for part in (self.client, self.cluster):
            if part is not None:
                part.close()
        self.client = self.cluster = None

    def _connect(self) -> Client:
        import dask
        from distributed import Client, LocalCluster

        # Without --scheduler, the address Dask's own `Client()` would use (DASK_SCHEDULER_ADDRESS), if any.
        named = f"--scheduler {self.scheduler}" if self.scheduler else None
        address = self.scheduler or dask.config.get("scheduler-address", None)
        if address is None:
            # Workers that are daemonic processes may not start children, and each target needs one.
            with dask.config.set({"distributed.worker.daemon": False}):
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                            silence_logs=logging.CRITICAL)
            return Client(self.cluster)
        named = named or f"Dask's scheduler-address (DASK_SCHEDULER_ADDRESS) {address}"
        if self.workers is not None:
            raise UsageError(f"--jobs sizes a local cluster, and {named} names a running one: drop --jobs (its workers decide how many "
                             "targets run at once)")
        try:
            return Client(address)
        except (OSError, ValueError, TypeError) as exc:  # refused, timed out, not an address
            raise UsageError(f"{named}: cannot reach a Dask scheduler there ({first_line(exc)})") from None


class _Task:
    """One target's model half on the cluster, seen from the runner: it ends when its future does, which wakes
    the runner through a pipe (the runner waits on pipes and processes, not futures). The worker's child has
    the time limit; nothing here kills it but an interruption, which cancels the task and sets the run's stop event."""

    deadline = None

    def __init__(self, executor: DaskExecutor, runner: Runner, slot: Slot) -> None:
        assert executor.client is not None and executor.stop is not None
        self.executor = executor
        self.runner = runner
        self.slot = slot
        self.reader, self.writer = multiprocessing.Pipe(duplex=False)
        shipped = dataclasses.replace(slot, results=[], read=[])  # the source results and reads stay here
        self.future: Future = executor.client.submit(
            _audit_on_worker, shipped, runner.engine.options, runner.timeout, runner.show_output is not None, executor.children,
            executor.stop.name, key=f"audit-{uuid.uuid4().hex}", pure=False,
        )
        self.future.add_done_callback(self._wake)

    def _wake(self, future: Future) -> None:  # on the client's event loop thread
        with contextlib.suppress(OSError):
            self.writer.send_bytes(b"")

    @property
    def ended(self) -> bool:
        return self.reader.poll()

    def waitables(self) -> list[Any]:
        return [self.reader]

    def serve(self, ready: set[Any]) -> None:
        """Nothing comes before the end: the worker's runner gathers the child's messages and output."""

    def kill(self, timed_out: bool = False) -> None:
        """The run was interrupted: cancel this task, and stop the children of all running ones."""
        self.executor.interrupt()
        self.future.cancel()

    def finish(self) -> None:
        try:
            remote: Slot = self.future.result()
        except Exception as exc:  # noqa: BLE001 - the cluster's failure is this target's error
            self.slot.results.append(TargetResult(target=self.slot.label, status="error", error=_failure(exc)))
            self.runner.finished(self.slot, complete=False)
        else:
            self.slot.results.extend(remote.results)
            self.slot.read.extend(remote.read)
            self.slot.output = remote.output
            self.runner.finished(self.slot, complete=remote.complete)
        self.close()

    def close(self) -> None:
        self.future.release()
        self.reader.close()
        self.writer.close()


def _failure(exc: BaseException) -> str:
    from distributed import KilledWorker

    if isinstance(exc, WorkerUnfit):
        return str(exc)
    if isinstance(exc, KilledWorker):
        return f"the Dask workers that ran it died ({first_line(exc)})"
    if isinstance(exc, CancelledError):
        return f"the Dask cluster dropped it ({first_line(exc)})"
    return f"could not be audited on the Dask cluster: {type(exc).__name__}: {first_line(exc)}"


def _audit_on_worker(slot: Slot, options: Options, timeout: float, shown: bool, children: int, stop: str) -> Slot:
    """What a worker runs for one target: the local runner's model half, once the worker is fit for it."""
    from distributed import Event, get_worker

    if multiprocessing.current_process().daemon:
        raise WorkerUnfit(f"the Dask worker {get_worker().address} is a daemonic process, which may not start the process a target is "
                          "audited in: start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False")
    if not os.path.isdir(slot.cwd):
        raise WorkerUnfit(f"the working directory {slot.cwd} is not on the Dask worker {get_worker().address}: workers need the "
                          "targets at the same paths (a shared file system)")
    return audit_models_here(slot, options, timeout, shown, children, stopped=Event(stop).is_set)
