"""A verdict reached in a worker process, handed to the process that built the callback and started training.

Lightning's spawn-based strategies (`ddp_spawn`, `ddp_fork`, `ddp_notebook`) run `fit` in processes they start:
the process that called `trainer.fit()` runs none of the callback's training hooks, gets torch's
`ProcessRaisedException` when a worker raises, and would never see the report. The callback carries a `Handoff`
into the workers (pickled, or copied by fork); rank 0 writes its report there, as the result cache's JSON
(`cache/codec.py`: data, never pickle), and the launching process reads it back. The file's name is random and
private to this user; the launching process removes it when it reads it, or when the callback is collected.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
import weakref
from pathlib import Path

from auditor.findings import Report


class Handoff:
    """`send(report)` in a worker process; `receive()` in the process that made the Handoff (None when no
    worker sent anything since the last `receive`)."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.path = Path(tempfile.gettempdir()) / f"auditor-verdict-{uuid.uuid4().hex}.json"
        weakref.finalize(self, _remove, self.path)

    def send(self, report: Report) -> None:
        """In a worker (a process other than the owner): write the report for the owner; elsewhere nothing."""
        if os.getpid() == self.owner:
            return
        from auditor.cache.codec import encode

        staging = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(encode(report.results), file)
        os.replace(staging, self.path)

    def receive(self) -> Report | None:
        """In the owner: the report a worker sent, once; elsewhere, or when none came, None."""
        if os.getpid() != self.owner:
            return None
        from auditor.cache.codec import decode

        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return None
        _remove(self.path)
        return Report(decode(json.loads(text)))


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
