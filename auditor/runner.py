"""Auditing targets with the user's code in child processes, so that nothing it does reaches this process.

The parent (the `audit` command) never imports the user's code, nor torch: it does what needs no user code
itself (a file's source checks, `Engine.audit_source`) and hands each target whose models must be imported to a
child process (`auditor.worker`). Children are forked from a server that imported torch and the auditor once
(multiprocessing's forkserver; spawn where fork is unavailable), one fresh child per target, so every target
starts from the same pristine state and results do not depend on what ran before. Whatever happens to a child
becomes that target's result:

- its stdout and stderr (prints, C-level writes, torch warnings) come back through a pipe and are shown on
  stderr with --verbose, never on stdout;
- an exit, a signal or a crash becomes an error naming the phase ("exited with status 0 while importing");
- a target running longer than `timeout` seconds is killed ("timed out after 300 s while building Net");
- with `jobs` > 1 that many children run at once; results and shown output stay in target order;
- a child runs in the parent's working directory (results name files relative to it), whatever the fork
  server's was when it started;
- `--fix` folders are staged in the parent's `OutputFolder` at a child's request and committed once at the end;
  an interrupted run kills its children and removes the staging area.

With a `ResultCache` (`auditor.cache`), a target whose entry is current is answered from it before anything else
runs (no source check, no child, and no fork server when every target is answered so); every other target's
results are stored once it completes, with the files its audit read: the parent's source check and the child's
imports and reads. A target whose child did not complete (an exit, a signal, a timeout) or met a bug of the
tool's is not stored.

Where the children run is the `Executor`'s business: `Processes` (this machine, `jobs` at once) by default, or an
executor that ships each target's model half elsewhere and runs it there with `audit_models_here`, the same
child process machinery on the other side (`auditor.executors.dask`: one task per target on a Dask cluster).
Everything else (cache, source checks, order, shown output, --fix staging) stays in this process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from auditor import reaping
from auditor.engine import Engine, target_label
from auditor.findings import TargetResult, settle_provisional
from auditor.options import Options
from auditor.targets import Target

if TYPE_CHECKING:
    from auditor.cache import ResultCache
    from auditor.fixing.writer import OutputFolder

DEFAULT_TIMEOUT = 300.0  # seconds per target; 0 means no limit
OUTPUT_KEPT = 64 * 1024  # bytes of a child's output kept from its start, and as many from its end
# torch's tracing machinery (dynamo, sympy, inductor): about as long to import as torch itself. A child imports it
# when its model needs it: torch.export (models fx cannot trace), fake tensors, a random draw on the meta device
# (3 of the 20 rule fixtures). The fork server preloads it when export is the first capture, or when so many
# children will run that some surely need it.
TRACING_STACK = ["torch._dynamo", "torch.export._trace", "torch._inductor"]
TRACING_PRELOAD_AT = 4  # children

STOP_POLL = 2.0  # seconds between two questions to a runner's `stopped`
Progress = Callable[[str], None]
ShowOutput = Callable[[str, str], None]  # (target label, what its code wrote)


def run_targets(
    targets: list[Target], options: Options, *, jobs: int = 1, timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None, show_output: ShowOutput | None = None, cache: ResultCache | None = None,
    executor: Executor | None = None,
) -> list[TargetResult]:
    """Audit `targets`, each one's models in a child process, and return the results in target order.
    `show_output` receives what a target's code wrote (without it, a failed target's error says that it wrote
    something). `cache` answers unchanged targets and keeps the others' results; never with --fix, whose
    written files are the point of the run. `executor` decides where the children run (default: `jobs` at
    once on this machine)."""
    output = _output_folder(options)
    engine = Engine(options, output=output)
    runner = Runner(engine, output, executor=executor or Processes(jobs), timeout=timeout, progress=progress or (lambda _: None),
                    show_output=show_output, cache=cache if options.fix is None else None)
    with engine.committing_fixes():
        results = runner.run(targets)
    return settle_provisional(results)


def _output_folder(options: Options) -> OutputFolder | None:
    """`--out`, staged here for every child (imported only with --fix: `auditor.fixing` imports torch)."""
    if options.fix is None or options.fix.out is None:
        return None
    from auditor.fixing.writer import OutputFolder

    return OutputFolder(options.fix.out, force=options.fix.force)


@dataclass
class Slot:
    """One target's place in the output: its results in order (the parent's source results, then the child's)."""

    target: Target
    label: str
    results: list[TargetResult]
    done: bool
    output: str = ""
    started_ns: int = 0  # when its audit began (time.time_ns)
    read: list[str] = field(default_factory=list)  # the files its audit read, in the parent and in its child
    complete: bool = False  # done, and its results are the target's whole, sound answer
    cwd: str = field(default_factory=os.getcwd)  # where its child runs: the parent's working directory


class Child(Protocol):
    """A started target as the runner waits on it: `Processes`' `_Child`, or an executor's remote task."""

    deadline: float | None  # when the runner kills it (None: no limit here)

    @property
    def ended(self) -> bool: ...
    def waitables(self) -> list[Any]: ...  # what `multiprocessing.connection.wait` wakes the runner on
    def serve(self, ready: set[Any]) -> None: ...
    def kill(self, timed_out: bool = False) -> None: ...
    def finish(self) -> None: ...  # ended: complete its slot (`Runner.finished`) and free it
    def close(self) -> None: ...


class Executor(Protocol):
    """Where targets' model halves run, and how many at once."""

    capacity: int  # children in flight at once

    def prepare(self, options: Options, children: int) -> None: ...  # before the first of `children` starts
    def start(self, runner: Runner, slot: Slot) -> Child: ...
    def close(self) -> None: ...  # after the last run: free what it holds (a cluster, a connection)


class Stopped(Exception):
    """The runner's `stopped` said so (the run that sent this target was interrupted): its children were killed."""


class Runner:
    def __init__(self, engine: Engine, output: OutputFolder | None, *, executor: Executor, timeout: float, progress: Progress,
                 show_output: ShowOutput | None, cache: ResultCache | None = None, stopped: Callable[[], bool] | None = None) -> None:
        self.engine = engine
        self.stopped = stopped  # asked every STOP_POLL seconds: True ends the run as Ctrl-C would
        self.cache = cache
        self.output = output
        self.executor = executor
        self.timeout = timeout
        self.progress = progress
        self.show_output = show_output
        self._shown = 0  # slots whose output was shown, in order

    def run(self, targets: list[Target]) -> list[TargetResult]:
        self.engine.prepare(targets)  # the repositories read once for all their files' plans
        slots = [self._begin(target) for target in targets]
        self.drive(slots)
        return [result for slot in slots for result in slot.results]

    def drive(self, slots: list[Slot]) -> None:
        """Run the children of the slots not yet done, showing each slot's output in order as it completes."""
        waiting = deque(slot for slot in slots if not slot.done)
        if waiting:
            self.executor.prepare(self.engine.options, len(waiting))
        running: list[Child] = []
        try:
            while waiting or running:
                if self.stopped is not None and self.stopped():
                    raise Stopped("the run that sent these targets was interrupted")
                while waiting and len(running) < self.executor.capacity:
                    child = self._start(waiting.popleft())
                    if child is not None:
                        running.append(child)
                self._serve(running)
                self._show_in_order(slots)
        finally:
            for child in running:  # interrupted: nothing of the user's code may outlive the run
                child.kill()
                child.close()
        self._show_in_order(slots)

    def _begin(self, target: Target) -> Slot:
        """A target's place, answered from the cache, or with the part without the user's code done here."""
        label = target_label(target)
        cached = self.cache.lookup(target) if self.cache is not None else None
        if cached is not None:
            return Slot(target, label, cached.results, done=True, output=cached.output)
        self.progress(label)
        slot = Slot(target, label, [], done=False, started_ns=time.time_ns())
        slot.results, needs_models = self.engine.audit_source(target)
        slot.read = [str(path) for path in self.engine.source_files(target)]
        if not needs_models:
            self.finished(slot, complete=True)
        return slot

    def finished(self, slot: Slot, complete: bool) -> None:
        """`slot` has all its results; keep them in the cache when they are the target's whole, sound answer."""
        slot.done, slot.complete = True, complete and not any(_tool_failure(result) for result in slot.results)
        if self.cache is None or not slot.complete:
            return
        files = [*slot.read, *([str(slot.target.path)] if slot.target.path is not None else [])]
        self.cache.store(slot.target, slot.results, slot.output, files, slot.started_ns)

    def _start(self, slot: Slot) -> Child | None:
        self.progress(slot.label)
        try:
            return self.executor.start(self, slot)
        except Exception as exc:  # noqa: BLE001 - no process could be started: this target fails, the others run
            slot.results.append(TargetResult(target=slot.label, status="error", error=f"could not start a process for it: {type(exc).__name__}: {exc}"))
            slot.done = True
            return None

    def _serve(self, running: list[Child]) -> None:
        """Wait for any child to say something, write, end, or run out of time; handle it."""
        deadlines = [c.deadline for c in running if c.deadline is not None]
        wait_for = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        if self.stopped is not None:
            wait_for = min(wait_for, STOP_POLL) if wait_for is not None else STOP_POLL
        ready = set(wait([w for child in running for w in child.waitables()], timeout=wait_for))
        for child in list(running):
            child.serve(ready)
            if child.deadline is not None and time.monotonic() >= child.deadline and not child.ended:
                child.kill(timed_out=True)
            if child.ended:
                child.finish()
                running.remove(child)

    def _show_in_order(self, slots: list[Slot]) -> None:
        while self._shown < len(slots) and slots[self._shown].done:
            slot = slots[self._shown]
            if self.show_output is not None and slot.output:
                self.show_output(slot.label, slot.output)
            self._shown += 1


def _tool_failure(result: TargetResult) -> bool:
    """A bug of the tool's (or a resource it ran out of), not an answer about the user's code."""
    return result.status == "error" and (result.error or "").startswith("internal error")


def preload(options: Options, children: int) -> list[str]:
    """What the fork server imports once for every child: `auditor.server` (which makes it the keeper of what
    targets leave running, then imports the worker: torch, the engine, fx and hooks captures, the rules), and
    what this run's options and size say its children will need."""
    modules = ["auditor.server"]
    if options.probe:
        modules.append("auditor.probes")
    if options.fix is not None:
        modules.append("auditor.fixing.fixer")
    if options.capture[0] == "export" or children >= TRACING_PRELOAD_AT:
        modules += TRACING_STACK
    return modules


def audit_models_here(slot: Slot, options: Options, timeout: float, shown: bool, children: int,
                      stopped: Callable[[], bool] | None = None) -> Slot:
    """The model half of `slot`'s target in a child process of this machine, as `run_targets` runs it: for an
    executor that ships targets to other processes (a Dask worker runs this). `shown`: the caller shows what
    the target's code wrote (else a failed target's error says that it wrote something); `children`: how many
    the caller's run starts, which decides what a new fork server preloads, as it would there; `stopped`: has
    the caller's run been interrupted (then the child is killed and `Stopped` raised). Returns the slot with
    the child's results, its output, the files it read and whether it completed."""
    executor = Processes()
    executor.prepare(options, children)
    runner = Runner(Engine(options), None, executor=executor, timeout=timeout, progress=lambda _: None,
                    show_output=(lambda label, text: None) if shown else None, stopped=stopped)  # the output is kept on the slot
    runner.drive([slot])
    return slot


class Processes:
    """The default executor: children of this process, `jobs` at once, from a fork server that imported torch
    and the auditor once, or spawned where the platform cannot fork (each child then imports them itself). One
    server serves a process for its lifetime (a test session's CLI runs share it); nothing it imports may touch
    CUDA, so that children can. A process may run several runners at once (a Dask worker's threads)."""

    def __init__(self, jobs: int = 1) -> None:
        self.capacity = max(1, jobs)
        if "forkserver" in multiprocessing.get_all_start_methods():
            self.context: Any = multiprocessing.get_context("forkserver")
        else:  # pragma: no cover - Windows
            self.context = multiprocessing.get_context("spawn")
        self.server: int | None = None  # the fork server's pid

    def end_strays(self) -> None:
        """End what targets left running: the fork server's children other than the live audit children (the
        orphans it adopted, `auditor.reaping`), and everything below them."""
        with _PROCESS_STATE:
            if self.server is not None:
                reaping.end_strays(self.server, set(_LIVE))

    def prepare(self, options: Options, children: int) -> None:
        self._start_server(preload(options, children))

    def start(self, runner: Runner, slot: Slot) -> Child:
        return _Child(runner, slot, self)

    def close(self) -> None:
        """Nothing to free: the fork server serves this process for its lifetime."""

    def _start_server(self, modules: list[str]) -> None:
        """Start the fork server (if it is not running) with `modules` preloaded. Its `sys.path` is this
        process's (and not the working directory, which `python -c` would add): it imports the same auditor and
        torch as this process would, and no `torch.py` of the user's. It ignores Ctrl-C, which the terminal
        sends to it too (the run's own Ctrl-C handling stops the children)."""
        if self.context.get_start_method() != "forkserver":
            return
        from multiprocessing import forkserver

        self.context.set_forkserver_preload(modules)
        path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
        with _PROCESS_STATE, _environment(PYTHONPATH=path, PYTHONSAFEPATH="1"), _sigint_ignored():
            _short_socket_folder()
            forkserver.ensure_running()
        self.server = getattr(forkserver._forkserver, "_forkserver_pid", None)


def _short_socket_folder() -> None:
    """The fork server listens on a socket in multiprocessing's `pymp-*` folder under TMPDIR, and a socket's path
    holds at most 107 bytes: a deep TMPDIR (pytest's tmp_path, a CI runner's work folder) ended every run in
    'internal error: AF_UNIX path too long'. There, that folder is made under /tmp instead (it is removed the
    same way when the run ends)."""
    from multiprocessing import util

    if len(os.fsencode(tempfile.gettempdir())) <= _LONGEST_SOCKET_PARENT or not os.access("/tmp", os.W_OK):
        return
    saved, tempfile.tempdir = tempfile.tempdir, "/tmp"
    try:
        util.get_temp_dir()  # made now, and kept for this process's life
    finally:
        tempfile.tempdir = saved


_LONGEST_SOCKET_PARENT = 70  # + "/pymp-XXXXXXXX/listener-XXXXXXXX" (33 bytes) stays under AF_UNIX's 107
_PROCESS_STATE = threading.Lock()  # held while the environment or `__main__` is changed to start a process
_LIVE: set[int] = set()  # the audit children of this process's fork server now running, whichever runner's


class _Child:
    """One target's child process, seen from the parent: its channel, its output, its phase and deadline."""

    def __init__(self, runner: Runner, slot: Slot, processes: Processes) -> None:
        self.runner = runner
        self.processes = processes
        context = processes.context
        self.slot = slot
        self.phase = "starting"
        self.completed = False  # the child said "done"
        self.crashed = False  # the tool failed in it outside any one model's guard
        self.timed_out = False
        self.staged: list[Path] = []  # --fix folders staged for it, not yet claimed by a result
        self.captured = _CapturedOutput()
        self.channel, child_channel = context.Pipe()
        self.reader, writer = context.Pipe(duplex=False)
        self.scratch = tempfile.mkdtemp(prefix="auditor-")  # the child's temporary folder, removed when it ends
        self.process = context.Process(
            target=_child_main, name=f"audit {slot.label}",
            args=(slot.target, runner.engine.options, child_channel, writer, dict(os.environ), slot.cwd, self.scratch),
        )
        try:
            with _PROCESS_STATE, _main_module_hidden():
                self.process.start()
                _LIVE.add(self.process.pid)
        finally:
            child_channel.close()
            writer.close()
        self.open: list[Any] = [self.channel, self.reader]
        self.deadline = time.monotonic() + runner.timeout if runner.timeout > 0 else None

    @property
    def ended(self) -> bool:
        return self.process.exitcode is not None

    def waitables(self) -> list[Any]:
        return [*self.open, self.process.sentinel]

    def serve(self, ready: set[Any]) -> None:
        if self.channel in ready and self.channel in self.open:
            self._receive()
        if self.reader in ready and self.reader in self.open:
            self._read_output()

    def _receive(self) -> None:
        try:
            while self.channel.poll():
                self._handle(self.channel.recv())
        except (EOFError, OSError):
            self.open.remove(self.channel)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "phase":
            self.phase = message[1]
            self.runner.progress(f"{self.slot.label}: {self.phase}")
        elif kind == "result":
            result: TargetResult = message[1]
            for folder in self.staged:  # staged while this model was audited
                self.runner.engine.adopt_fix(result, folder)
            self.staged = []
            self.slot.results.append(result)
        elif kind == "stage":
            self._stage(message[1])
        elif kind == "discard":
            folder = Path(message[1])
            assert self.runner.output is not None
            self.runner.output.discard(folder)
            self.staged = [f for f in self.staged if f != folder]
        elif kind == "crash":
            self.crashed = True
            self.slot.results.append(TargetResult(target=self.slot.label, status="error", error=message[1], traceback=message[2]))
        elif kind == "read":
            self.slot.read.extend(message[1])
        elif kind == "done":
            self.completed = True

    def _stage(self, label: str) -> None:
        assert self.runner.output is not None
        try:
            folder = self.runner.output.stage(label)
        except Exception as exc:  # noqa: BLE001 - the child's --fix fails with this message
            answer: tuple[str, str] = ("error", str(exc))
        else:
            self.staged.append(folder)
            answer = ("staged", str(folder))
        with contextlib.suppress(OSError):  # the child died meanwhile: its folder is discarded when it is finished
            self.channel.send(answer)

    def _read_output(self, block: bool = True) -> None:
        fd = self.reader.fileno()
        os.set_blocking(fd, block)
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self.open.remove(self.reader)
                return
            self.captured.add(data)
            if block:
                return

    def kill(self, timed_out: bool = False) -> None:
        """End the child and whatever the user's code started in its process group."""
        self.timed_out = self.timed_out or timed_out
        self._kill_group()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            self.process.kill()
        self.process.join()

    def _kill_group(self) -> None:
        if hasattr(os, "killpg"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def finish(self) -> None:
        """The child has ended: read what is left, turn an early end into the target's error, free it all."""
        self.process.join()
        if self.channel in self.open:
            self._receive()
        if self.reader in self.open:
            self._read_output(block=False)  # a process the user's code started may still hold the pipe open
        if not self.completed:
            for folder in self.staged:
                assert self.runner.output is not None
                self.runner.output.discard(folder)
            self.staged = []
            error = self._early_end()
            if self.captured and self.runner.show_output is None:
                error += "; --verbose shows what it wrote"
            self.slot.results.append(TargetResult(target=self.slot.label, status="error", error=error))
        self.slot.output = self.captured.text()
        self.runner.finished(self.slot, complete=self.completed and not self.crashed)
        self.close()

    def _early_end(self) -> str:
        code = self.process.exitcode
        if self.timed_out:
            return f"timed out after {self.runner.timeout:g} s while {self.phase} (--timeout SECONDS sets the limit; 0 for none)"
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            hint = " (out of memory?)" if code == -signal.SIGKILL else ""
            return f"killed by {name} while {self.phase}{hint}"
        return f"exited with status {code} while {self.phase}"

    def close(self) -> None:
        self._kill_group()  # what the user's code left running in its group
        with _PROCESS_STATE:
            _LIVE.discard(self.process.pid)
        self.processes.end_strays()  # and what it left elsewhere (a session of its own, a double fork)
        for end in (self.channel, self.reader):
            end.close()
        with contextlib.suppress(ValueError):
            self.process.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


class _CapturedOutput:
    """What a child wrote: its first and last `OUTPUT_KEPT` bytes (a model printing in a loop until its time
    limit fills neither memory nor disk)."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self.head)

    def add(self, data: bytes) -> None:
        room = OUTPUT_KEPT - len(self.head)
        self.head += data[:room]
        self.tail += data[room:] if room > 0 else data
        if len(self.tail) > OUTPUT_KEPT:
            extra = len(self.tail) - OUTPUT_KEPT
            self.dropped += extra
            del self.tail[:extra]

    def text(self) -> str:
        cut = f"\n[... {self.dropped} bytes not shown ...]\n" if self.dropped else ""
        return (bytes(self.head).decode(errors="replace") + cut + bytes(self.tail).decode(errors="replace")).rstrip("\n")


def _child_main(*args: Any) -> None:
    """What a child runs: a reference the parent can pickle without importing the worker (and torch)."""
    from auditor.worker import audit_in_child

    audit_in_child(*args)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """multiprocessing has a child run the parent's main script again, to find what it defines; what a child
    runs lives in importable modules, and a script that calls the auditor must not run twice (nor the `audit`
    script import the command line in every child). So the child is told of no main module."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in what this process starts meanwhile (an ignored signal stays ignored across exec)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
