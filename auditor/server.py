"""The fork server's first import (`auditor.runner` preloads it): it makes that process the keeper of the run's
processes, then imports the worker (torch, the engine, the rules) once for every child.

Importing this module changes the importing process, which is its purpose; nothing else imports it. The server
becomes a child subreaper (`auditor.reaping`): what a target's code started and left behind is adopted here,
where the parent ends it. It ignores SIGINT (multiprocessing's doing), SIGTERM and SIGHUP, which a terminal or
`kill -- -PGID` sends to the whole group: the parent decides when children end, and the server ends when the
parent does (its pipe from the parent closes), taking whatever it still holds with it.
"""

from __future__ import annotations

import atexit
import os
import signal
import warnings

from auditor import reaping

if reaping.become_subreaper():
    atexit.register(reaping.end_tree, os.getpid(), include_root=False)
    # multiprocessing's server warns of every child it reaps that it did not fork: the orphans it adopts
    warnings.filterwarnings("ignore", message="forkserver: waitpid returned unexpected pid")
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)

import auditor.worker  # noqa: E402,F401 - after the above: a slow import the server must survive signals during
