"""What a cached result depends on, in two parts.

- The entry's address: what the run is (the auditor's code and its rule packs, torch's and Python's versions,
  the environment that decides where imports come from, the working directory that result labels are relative
  to, every option that can change a result) and what the target is (its kind, path, name, arguments, inputs,
  and the plan read from the rest of its repository: how its models are built and fed).
- The files the audit read, each with its size, modification time and, for the user's own files, a hash of its
  content: stored in the entry and checked when it is read. An edited file changes its content; a file only
  touched (a checkout) still matches its hash; an installed package's files are judged by size and time.

Computing the address imports nothing heavy: torch's version comes from its installed metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from auditor import __version__
from auditor.cache import places
from auditor.cache.codec import plain
from auditor.options import Options
from auditor.targets import Target

FORMAT = 1  # the layout of an entry; entries of another format are ignored
# Options that decide only what is done with results (the exit code's threshold, a chart drawn from them, the
# API's loss function, which the command line never sets): every other option is part of the key, those added
# later included.
NOT_IN_KEY = frozenset({"fail_on", "plot", "probe_loss"})
ABSENT = -1  # the size of a file that did not exist
RACY_NS = 2_000_000_000  # a file modified this close to the entry's writing is judged by its content, never its time


def run_key(options: Options) -> dict[str, Any]:
    """What every target of one run shares."""
    return {
        "format": FORMAT,
        "auditor": __version__,
        "code": _code_signature(),
        "torch": _version("torch"),
        "python": sys.version,
        "prefix": sys.prefix,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "cwd": os.getcwd(),
        "options": {f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options) if f.name not in NOT_IN_KEY},
    }


def target_key(target: Target) -> dict[str, Any]:
    return {
        "kind": target.kind.value,
        "text": target.text,
        "path": str(target.path.resolve()) if target.path is not None else None,
        "module": target.module,
        "name": target.name,
        "kwargs": plain(target.kwargs),
        "inputs": list(target.inputs),
        "plan": _digest(target.plan),
    }


def _digest(plan: Any) -> str | None:
    """A file's plan (`static.plan.FilePlan`), read from the repository's other files: the call that builds a
    model (train.py), the argparse defaults and configs it reads, the calls that feed it. An edit there that
    changes how a model is built or fed changes the plan, so the result is not answered from the cache; an edit
    that does not, does not."""
    if plan is None:
        return None
    return hashlib.sha256(json.dumps(plain(plan), sort_keys=True, default=str).encode()).hexdigest()


def address(run: dict[str, Any], target: Target) -> str:
    text = json.dumps([run, target_key(target)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Dependency:
    """A file a result depends on, as it was when the result was stored."""

    path: str
    size: int  # ABSENT: the audit tried to read it and it did not exist
    mtime_ns: int
    sha256: str | None  # None: judged by size and time alone (an installed package's file)

    @classmethod
    def from_record(cls, record: Any) -> Dependency:
        """A dependency as an entry lists it; ValueError for anything else."""
        if not (isinstance(record, list) and len(record) == 4 and isinstance(record[0], str)
                and all(isinstance(n, int) and not isinstance(n, bool) for n in record[1:3])
                and (record[3] is None or isinstance(record[3], str))):
            raise ValueError(f"{record!r}: not a dependency")
        return cls(*record)

    def to_record(self) -> list[Any]:
        return [self.path, self.size, self.mtime_ns, self.sha256]

    def holds(self, written_ns: int) -> bool:
        """Whether the file is still what the result was computed from."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return self.size == ABSENT
        except OSError:
            return False
        if not stat.S_ISREG(status.st_mode) or status.st_size != self.size:
            return False
        if status.st_mtime_ns == self.mtime_ns and self.mtime_ns < written_ns - RACY_NS:
            return True
        try:
            return self.sha256 is not None and _sha256(self.path) == self.sha256
        except OSError:
            return False


def dependencies(paths: Iterable[str | Path], started_ns: int) -> list[Dependency] | None:
    """The files a result depends on, as they are now (a folder opened is none); None when one changed after
    the target's audit started, or cannot be read (the result may be of either version: it is not stored)."""
    now = time.time_ns()
    installed = places.installed()
    found = []
    for path in sorted({os.path.abspath(p) for p in paths}):
        try:
            status = os.stat(path)
        except FileNotFoundError:
            found.append(Dependency(path, ABSENT, 0, None))
            continue
        except OSError:
            return None
        if not stat.S_ISREG(status.st_mode):
            continue
        if status.st_mtime_ns > started_ns:
            return None
        racy = status.st_mtime_ns >= now - RACY_NS
        try:
            digest = _sha256(path) if racy or not places.under(path, installed) else None
        except OSError:
            return None
        found.append(Dependency(path, status.st_size, status.st_mtime_ns, digest))
    return found


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _code_signature() -> str:
    """The auditor's own code and that of every rule pack, by each file's size and time (an editable install
    changes it with every edit; an installed release never)."""
    from auditor.rule import all_rules

    roots = {Path(__file__).resolve().parent.parent}
    for rule in all_rules():
        top = sys.modules.get(type(rule).__module__.split(".")[0])
        if top is not None and getattr(top, "__file__", None):
            file = Path(top.__file__).resolve()
            roots.add(file.parent if hasattr(top, "__path__") else file)
    digest = hashlib.sha256()
    for root in sorted(roots):
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            status = path.stat()
            digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
