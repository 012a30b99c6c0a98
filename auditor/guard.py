"""A guard on what the user's code does while the tool imports, builds and runs it (PEP 578 audit hooks).

Auditing a whole file or folder imports files nobody asked to run; what their code does there must stay in the
process: `install()` adds an audit hook (`sys.addaudithook`) to the child process before the first user import,
and from then on, for the rest of that process, these are refused (the operation raises `Refused` in the code
that attempted it, and a `Refusal` saying what and where is recorded):

- writing, creating, deleting, renaming, linking or chmod-ing files anywhere but the folders the tool writes to
  (its own temporary folder, `--fix` staging folders, `/dev/null`); reading is fine. Python writes no bytecode
  meanwhile, and `tempfile` and matplotlib's cache point into the temporary folder, so a library that keeps a
  temporary file or a cache works;
- starting processes (`subprocess`, `os.system`, `os.exec*`, `os.fork`, `os.posix_spawn`, `pty`, also
  `_posixsubprocess.fork_exec` called directly), signalling other processes, opening a web browser;
- the network: name lookups, connecting, binding, sending (`socket`, `urllib`, `http.client`, ...);
- loading a C library that is not part of the Python installation or an installed package, or looking up a
  function in one (`ctypes.CDLL("libc.so.6")`, `ctypes.pythonapi`), when the user's code asks for it;
- CUDA device queries the user's own code makes (`torch.cuda.is_available()`, `get_device_properties`, a tensor
  made on "cuda"): no audit event exists for these, so the `torch.cuda` entry points are wrapped.

Processes, signals, the network and browsers are refused whoever asks: the tool never uses them in such a
process (so neither does a `functools.partial` posing as a forward). Files, C libraries and CUDA are the tool's
and torch's business too (a cache the environment points elsewhere, a library torch loads lazily): a write is
refused when the user's code is on the stack or it runs in a thread that code started; a C library or a CUDA
query when the user's code makes the call itself (the first frame outside the standard library is theirs), not
when an installed package does it for them.

Refusals are sticky: code that catches `Refused` and carries on changes nothing, since the caller reads
`Guard.refusals` afterwards and does not audit what ran after one. Audit hooks cannot be removed. The guard keeps
code that means no harm from having effects while it is discovered; it does not contain code written to defeat
it (Python cannot sandbox Python in one process, and C extensions make no audit events): an OS sandbox does that.
"""

from __future__ import annotations

import os
import site
import stat
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterable

from auditor.files import PACKAGE_FOLDERS
from auditor.locations import display_path
from auditor.reaping import descendants

_TOOL_DIRS = (os.path.dirname(os.path.abspath(__file__)) + os.sep,)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# torch.cuda entry points that reach the driver (the first one a model makes initializes CUDA)
CUDA_QUERIES = (
    "is_available", "device_count", "current_device", "get_device_properties", "get_device_name",
    "get_device_capability", "mem_get_info", "set_device", "synchronize", "init", "_lazy_init", "is_bf16_supported",
    "memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved", "memory_stats",
    "utilization", "temperature", "power_draw", "clock_rate", "list_gpu_processes",
)
_CLOSED_MODULES = frozenset({"posix", "nt", "_posixsubprocess"})  # importing them again would undo the patches


class Refused(PermissionError):
    """Raised into the user's code at an operation the guard refuses."""


@dataclass(frozen=True)
class Refusal:
    """What the user's code attempted and where: "writes /tmp/x" "at import (line 4)"."""

    what: str
    where: str

    def __str__(self) -> str:
        return f"{self.what} {self.where}".strip()


class Guard:
    """The audit hook of one process, with what it refused. `home` is the file whose lines messages give as
    "(line N)"; `writable` the folders the tool writes to (more with `allow_writes`)."""

    def __init__(self, home: Path | None, writable: Iterable[Path] = ()) -> None:
        self.home = os.path.realpath(home) if home is not None else None
        self.refusals: list[Refusal] = []
        self.phase = ""  # what the tool is doing ("building Net"), for a refusal outside the user's frames
        self._writable = [os.path.realpath(p) for p in writable]
        self._installed = False
        self._tool_threads: set[int] = set()
        self._places = _Places(self.home)

    def allow_writes(self, folder: Path) -> None:
        """Let the code write below `folder` too (a --fix staging folder the tool writes a model to)."""
        self._writable.append(os.path.realpath(folder))

    def install(self) -> None:
        """Start guarding this process, for good: its threads now are the tool's, every later one the user's."""
        if self._installed:
            return
        self._installed = True
        self._tool_threads = {t.ident for t in threading.enumerate() if t.ident is not None}
        sys.dont_write_bytecode = True
        _close_unaudited()
        _wrap_cuda(self)
        sys.addaudithook(self._hook)

    # --- the hook ----------------------------------------------------------------------------------------------
    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        handler = _HANDLERS.get(event)
        if handler is not None:
            frame = sys._getframe(1)  # the code that raised the event
            what = handler(self, args, frame)
            if what is not None:
                self.refuse(what, frame)

    def refuse(self, what: str, frame: FrameType | None) -> None:
        """Record `what` with the user's place on the stack, and raise it into the code that did it."""
        refusal = Refusal(what, self._where(frame))
        self.refusals.append(refusal)
        raise Refused(f"auditor: refused while auditing: {refusal}")

    def _where(self, frame: FrameType | None) -> str:
        frame = self._users_frame(frame)
        if frame is None:
            if threading.get_ident() not in self._tool_threads:
                return "in a thread it started"
            return f"while {self.phase}" if self.phase else ""
        code = frame.f_code
        place = f"line {frame.f_lineno}" if os.path.realpath(code.co_filename) == self.home else f"{display_path(code.co_filename)}:{frame.f_lineno}"
        return f"at import ({place})" if code.co_name == "<module>" else f"in {getattr(code, 'co_qualname', code.co_name)} ({place})"

    def _users_frame(self, frame: FrameType | None) -> FrameType | None:
        """The innermost frame of the user's code on the stack from `frame` outward, if any."""
        while frame is not None and self._places.kind(frame.f_code.co_filename) != "user":
            frame = frame.f_back
        return frame

    def users_doing(self, frame: FrameType | None) -> bool:
        """Whether the user's code is behind what `frame` does: its frames are on the stack, or this is a
        thread it started."""
        return self._users_frame(frame) is not None or threading.get_ident() not in self._tool_threads

    def users_call(self, frame: FrameType | None) -> bool:
        """Whether the user's code makes this call itself: the first frame outside the standard library is
        theirs, or there is none and this thread is one their code started."""
        while frame is not None and self._places.kind(frame.f_code.co_filename) == "stdlib":
            frame = frame.f_back
        if frame is None:
            return threading.get_ident() not in self._tool_threads
        return self._places.kind(frame.f_code.co_filename) == "user"

    def outside(self, frame: FrameType, path: Any, dir_fd: Any = None) -> str | None:
        """Where writing `path` really lands (links followed) when the user's code does it and that is outside
        the writable folders, else None (also for a descriptor already open). The tool's own writes (torch's
        caches wherever the environment puts them) are its business."""
        if isinstance(path, int) or not self.users_doing(frame):
            return None
        try:
            text = os.fsdecode(path)
            if dir_fd not in (None, -1) and not os.path.isabs(text):
                text = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), text)
            real = os.path.realpath(text)
        except (TypeError, ValueError, OSError):
            return repr(path)
        if real == os.devnull or any(real == root or real.startswith(root + os.sep) for root in self._writable):
            return None
        return display_path(real)

    def installed_library(self, name: Any) -> bool:
        return isinstance(name, (str, bytes, os.PathLike)) and self._places.installed(os.fsdecode(name))


class _Places:
    """Whose a source file is: the tool's, the standard library's, an installed package's, or the user's (the
    audited file is the user's wherever it is)."""

    def __init__(self, home: str | None) -> None:
        self.home = home
        paths = sysconfig.get_paths()
        packages = {*site.getsitepackages(), site.getusersitepackages(), paths["purelib"], paths["platlib"]}
        packages |= {entry for entry in sys.path if os.path.basename(entry.rstrip(os.sep)) in PACKAGE_FOLDERS}
        self.packages = tuple(os.path.realpath(p) + os.sep for p in packages if p)
        self.stdlib = tuple(os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib"))
        tool = list(_TOOL_DIRS)
        rules = sys.modules.get("auditor_rules")
        if rules is not None and getattr(rules, "__file__", None):
            tool.append(os.path.dirname(os.path.realpath(rules.__file__)) + os.sep)
        self.tool = tuple(tool)
        self.installation = self.packages + self.stdlib + tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix})
        self._kinds: dict[str, str] = {}

    def kind(self, filename: str) -> str:
        kind = self._kinds.get(filename)
        if kind is None:
            kind = self._kinds[filename] = self._kind(filename)
        return kind

    def _kind(self, filename: str) -> str:
        if filename.startswith("<"):  # frozen importlib, exec'd and generated code: judged by who runs it
            return "stdlib"
        real = os.path.realpath(filename)
        if real == self.home:  # even inside site-packages
            return "user"
        if real.startswith(self.tool):
            return "tool"
        if real.startswith(self.packages):
            return "package"
        return "stdlib" if real.startswith(self.stdlib) else "user"

    def installed(self, library: str) -> bool:
        return os.path.isabs(library) and os.path.realpath(library).startswith(self.installation)


# --- what each audit event means ---------------------------------------------------------------------------------
# A handler gets the event's arguments and the frame that raised it; it returns what the event does when that is
# refused, else None.
Handler = Callable[["Guard", tuple[Any, ...], FrameType], "str | None"]

def _short(value: Any, limit: int = 80) -> str:
    text = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else os.fsdecode(value) if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(path: Any) -> str:
    try:
        return display_path(os.fsdecode(path))
    except (TypeError, ValueError):
        return repr(path)


def _open(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
    path, mode, flags = args[0], args[1], args[2]
    writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
    if not writes:
        return _waits(path, flags)
    real = guard.outside(frame, path)
    return f"writes {real}" if real is not None else None


def _waits(path: Any, flags: Any) -> str | None:
    """Opening a FIFO waits for a writer, forever when none comes (`import helper` of a FIFO named helper.py):
    refused whoever asks, unless it is opened without blocking."""
    if isinstance(path, int) or (isinstance(flags, int) and flags & _NONBLOCK):
        return None
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
    except (OSError, TypeError, ValueError):
        return None
    return f"reads the FIFO {_shown(path)}, which waits for a writer"


def _path_change(verb: str, index: int = 0, dir_fd: int | None = None) -> Handler:
    def handler(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
        real = guard.outside(frame, args[index], args[dir_fd] if dir_fd is not None and len(args) > dir_fd else None)
        return f"{verb} {real}" if real is not None else None
    return handler


def _mkdir(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
    """`os.makedirs(..., exist_ok=True)` of a folder that exists (torch's cache folders) changes nothing."""
    if isinstance(args[0], (str, bytes)) and args[2] in (None, -1) and os.path.isdir(args[0]):
        return None
    return _make_folder(guard, args, frame)


_make_folder = _path_change("creates the folder", 0, 2)


def _two_paths(verb: str) -> Handler:
    def handler(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
        source, target = guard.outside(frame, args[0]), guard.outside(frame, args[1])
        if source is None and target is None:
            return None
        return f"{verb} {source or _shown(args[0])} to {target or _shown(args[1])}"
    return handler


def _always(what: Callable[[tuple[Any, ...]], str]) -> Handler:
    return lambda guard, args, frame: what(args)


def _signal(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
    """Signals to this process, its group and its descendants are its own business (a timeout kills them all)."""
    target = args[0]
    if target in (0, os.getpid(), -os.getpgrp()) or (isinstance(target, int) and target in descendants(os.getpid())):
        return None
    return f"sends a signal to process {target}"


def _killpg(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
    return None if args[0] in (0, os.getpgrp()) else f"sends a signal to process group {args[0]}"


def _dlopen(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
    name = args[0]
    if guard.installed_library(name) or not guard.users_call(frame):
        return None
    return f"loads the C library {_short(name if name is not None else 'of the process itself')}"


def _dlsym(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
    library = getattr(args[0], "_name", None)
    if guard.installed_library(library) or not guard.users_call(frame):
        return None
    return f"calls the C function {args[1]!s} of {_short(library if library is not None else 'the process itself')}"


def _sqlite(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
    database = args[0]
    real = None if database in (":memory:", "", b":memory:", b"") else guard.outside(frame, database)
    return f"opens the database {real}" if real is not None else None


def _import(guard: Guard, args: tuple[Any, ...], frame: FrameType) -> str | None:
    return f"imports {args[0]} again" if args[0] in _CLOSED_MODULES else None


def _starts(args: tuple[Any, ...]) -> str:
    return f"starts a process ({_short(args[0] if len(args) < 2 or args[1] is None else args[1])})"


def _connects(args: tuple[Any, ...]) -> str:
    address = args[1] if len(args) > 1 else args[0]
    shown = f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else _short(address)
    return f"opens a network connection to {shown}"


_HANDLERS: dict[str, Handler] = {
    "open": _open,
    "os.remove": _path_change("deletes", 0, 1),
    "os.rmdir": _path_change("deletes the folder", 0, 1),
    "os.mkdir": _mkdir,
    "os.chmod": _path_change("changes the mode of", 0, 2),
    "os.chown": _path_change("changes the owner of", 0, 3),
    "os.chflags": _path_change("changes the flags of"),
    "os.lchflags": _path_change("changes the flags of"),
    "os.truncate": _path_change("truncates"),
    "os.utime": _path_change("changes the times of", 0, 3),
    "os.setxattr": _path_change("changes the attributes of"),
    "os.removexattr": _path_change("changes the attributes of"),
    "os.rename": _two_paths("renames"),
    "os.link": _two_paths("links"),
    "os.symlink": _path_change("creates the link", 1, 2),
    "os.mkfifo": _path_change("creates the FIFO", 0, 2),  # raised by the guard's wrappers (no event of Python's)
    "os.mknod": _path_change("creates the device file", 0, 3),
    "shutil.rmtree": _path_change("deletes the folder"),
    "shutil.copyfile": _path_change("writes", 1),
    "shutil.copymode": _path_change("changes the mode of", 1),
    "shutil.copystat": _path_change("changes the mode of", 1),
    "shutil.copytree": _path_change("writes the folder", 1),
    "shutil.move": _two_paths("moves"),
    "shutil.chown": _path_change("changes the owner of"),
    "shutil.make_archive": _path_change("writes the archive"),
    "shutil.unpack_archive": _path_change("unpacks into", 1),
    "tempfile.mkstemp": _path_change("creates"),
    "tempfile.mkdtemp": _path_change("creates the folder"),
    "sqlite3.connect": _sqlite,
    "subprocess.Popen": _always(_starts),
    "os.system": _always(lambda args: f"starts a process ({_short(args[0])})"),
    "os.exec": _always(lambda args: f"runs {_short(args[0])} in its place"),
    "os.spawn": _always(lambda args: f"starts a process ({_short(args[1])})"),
    "os.posix_spawn": _always(lambda args: f"starts a process ({_short(args[1])})"),
    "os.fork": _always(lambda args: "forks the process"),
    "os.forkpty": _always(lambda args: "forks the process"),
    "os.startfile": _always(lambda args: f"opens {_short(args[0])}"),
    "_posixsubprocess.fork_exec": _always(lambda args: "starts a process"),  # raised by the guard's wrapper
    "os.kill": _signal,
    "os.killpg": _killpg,
    "signal.pthread_kill": _always(lambda args: "sends a signal to a thread"),
    "webbrowser.open": _always(lambda args: f"opens a web browser ({_short(args[0])})"),
    "socket.connect": _always(_connects),
    "socket.bind": _always(lambda args: f"listens on {_short(args[1])}"),
    "socket.sendto": _always(_connects),
    "socket.sendmsg": _always(_connects),
    "socket.getaddrinfo": _always(lambda args: f"looks up the network address of {_short(args[0])}"),
    "socket.gethostbyname": _always(lambda args: f"looks up the network address of {_short(args[0])}"),
    "socket.gethostbyname_ex": _always(lambda args: f"looks up the network address of {_short(args[0])}"),
    "socket.gethostbyaddr": _always(lambda args: f"looks up the network name of {_short(args[0])}"),
    "socket.getnameinfo": _always(lambda args: f"looks up the network name of {_short(args[0])}"),
    "urllib.Request": _always(lambda args: f"opens {_short(args[0])}"),
    "http.client.connect": _always(lambda args: f"opens a network connection to {args[1]}:{args[2]}"),
    "ftplib.connect": _always(lambda args: f"opens a network connection to {args[1]}:{args[2]}"),
    "smtplib.connect": _always(lambda args: f"opens a network connection to {args[1]}:{args[2]}"),
    "imaplib.open": _always(lambda args: f"opens a network connection to {args[1]}:{args[2]}"),
    "poplib.connect": _always(lambda args: f"opens a network connection to {args[1]}:{args[2]}"),
    "nntplib.connect": _always(lambda args: f"opens a network connection to {args[1]}:{args[2]}"),
    "telnetlib.Telnet.open": _always(lambda args: f"opens a network connection to {args[1]}:{args[2]}"),
    "ctypes.dlopen": _dlopen,
    "ctypes.dlsym": _dlsym,
    "ctypes.dlsym/handle": _dlsym,
    "import": _import,
}


def _close_unaudited() -> None:
    """What starts processes or makes files without an audit event of Python's is wrapped to raise one first:
    `_posixsubprocess.fork_exec` (what `subprocess` and `multiprocessing` call after their own events, if any),
    `os.mkfifo`, `os.mknod`.
    Importing their modules again, which would bring the unwrapped functions back, is refused, and `sys.audit`
    is bound now (code that replaces it silences the events Python code raises, not these)."""
    audit = sys.audit
    posixsubprocess = sys.modules.get("_posixsubprocess")
    if posixsubprocess is not None:
        fork_exec = posixsubprocess.fork_exec

        def audited_fork_exec(*args: Any) -> Any:
            audit("_posixsubprocess.fork_exec")
            return fork_exec(*args)

        posixsubprocess.fork_exec = audited_fork_exec
        if hasattr(sys.modules.get("subprocess"), "_fork_exec"):
            sys.modules["subprocess"]._fork_exec = audited_fork_exec  # bound there by name at its import
    mkfifo, mknod = os.mkfifo, os.mknod

    def audited_mkfifo(path: Any, mode: int = 0o666, *, dir_fd: Any = None) -> None:
        audit("os.mkfifo", path, mode, dir_fd)
        mkfifo(path, mode, dir_fd=dir_fd)

    def audited_mknod(path: Any, mode: int = 0o600, device: int = 0, *, dir_fd: Any = None) -> None:
        audit("os.mknod", path, mode, device, dir_fd)
        mknod(path, mode, device, dir_fd=dir_fd)

    for module in (os, sys.modules.get("posix")):
        if module is not None:
            module.mkfifo, module.mknod = audited_mkfifo, audited_mknod


def _wrap_cuda(guard: Guard) -> None:
    """Wrap torch.cuda's device queries: the user's own calls are refused (no audit event exists for them)."""
    cuda = sys.modules.get("torch.cuda")
    if cuda is None:
        return
    for name in CUDA_QUERIES:
        original = getattr(cuda, name, None)
        if callable(original):
            setattr(cuda, name, _cuda_query(guard, name, original))


def _cuda_query(guard: Guard, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    what = "makes a tensor on the CUDA device" if name == "_lazy_init" else f"queries the CUDA device (torch.cuda.{name})"

    def query(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1)
        if guard.users_call(caller):
            guard.refuse(what, caller)
        return original(*args, **kwargs)

    query.__name__ = query.__qualname__ = name
    query.__doc__ = original.__doc__
    return query

