"""The guard on the user's code (auditor/guard.py): a whole file or a folder is imported and its models built
and run under an audit hook that refuses writing files, starting processes, the network, loading foreign C
libraries and querying CUDA. Each fixture in fixtures/guard hides its side effect from the static check (or did,
before the guard: the issue's 24 reproductions) and names its marker; every one must be reported not audited,
with what it did and where, and no marker may exist after the run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from auditor.locations import display_path
from support import FIXTURES, cli, once_per_run

HERE = FIXTURES / "guard"
SHOWN = display_path(str(HERE))
FILES = sorted(p for p in HERE.glob("*.py"))

# stem -> what the refusal says (after "not audited: its code "), for each model of the file (None: audited)
EXPECTED = {
    "annotation_call": {"Net": "starts a process (touch {markers}/annotation_call) at import (line 6)"},
    "builtins_exec": {"Net": "writes {markers}/builtins_exec at import (line 7)"},
    "constructor_downloads": {"Net": "opens http://127.0.0.1:{port}/weights.pt in Net.__init__ (line 15)"},
    "constructor_queries_cuda": {"Net": "queries the CUDA device (torch.cuda.get_device_properties) in Net.__init__ (line 9)"},
    "dataclass_post_init": {"Net": "writes {markers}/dataclass_post_init in Config.__post_init__ (line 13)"},
    "delete_subscript": {"Net": "starts a process (touch {markers}/delete_subscript) at import (line 7)"},
    "dunder_new": {"Net": "starts a process (touch {markers}/dunder_new) in Settings.__new__ (line 9)"},
    "getattr_os_system": {"Net": "starts a process (touch {markers}/getattr_os_system) at import (line 6)"},
    "iife_lambda": {"Net": "starts a process (touch {markers}/iife_lambda) in <lambda> (line 6)"},
    "import_in_init": {"Net": "writes {markers}/import_in_init at import ({shown}/_helpers/in_init.py:4)"},
    "importlib_import": {"Net": "writes {markers}/importlib_import at import ({shown}/_helpers/side_effect.py:3)"},
    "inherited_init": {"Net": "writes {markers}/inherited_init in Logged.__init__ (line 9)"},
    "init_subclass": {name: "starts a process (touch {markers}/init_subclass) in Base.__init_subclass__ (line 10)" for name in ("Base", "Net")},
    "io_open": {"Net": "writes {markers}/io_open at import (line 7)"},
    "local_decorator": {"Net": "starts a process (touch {markers}/local_decorator) in registered (line 9)"},
    "map_os_system": {"Net": "starts a process (touch {markers}/map_os_system) at import (line 6)"},
    "metaclass_new": {"Net": "writes {markers}/metaclass_new in Registry.__new__ (line 9)"},
    "namespace_package": {"Net": "changes the times of {markers}/namespace_package at import ({shown}/_helpers/nspkg/touching.py:4)"},
    "pathlib_open": {"Net": "writes {markers}/pathlib_open at import (line 7)"},
    "raise_with_call": {"Net": "starts a process (touch {markers}/raise_with_call) at import (line 7)"},
    "runpy_run_path": {"Net": "starts a process (touch {markers}/runpy_run_path) at import ({shown}/_helpers/script.py:3)"},
    "set_name": {"Net": "writes {markers}/set_name in Option.__set_name__ (line 10)"},
    "staticmethod_call": {"Net": "creates the folder {markers}/staticmethod_call in Setup.prepare (line 10)"},
    "subscript_key": {"Net": "starts a process (touch {markers}/subscript_key) at import (line 7)"},
    "sys_path_import": {"Net": "writes {markers}/sys_path_import at import ({shown}/_helpers/side_effect.py:3)"},
    # beyond the reproductions: routes around the obvious events, and what must still work
    "atexit_handler": {"Net": None},  # audited; a child ends without running the user's exit handlers
    "clean_temporary_files": {"Net": None},  # reads, temporary files, warnings and logs are no side effects
    "ctypes_libc": {"Net": "loads the C library libc.so.6 in effect (line 9)"},
    "ctypes_pythonapi": {"Net": "calls the C function PyRun_SimpleString of the process itself in effect (line 10)"},
    "deletes_a_file": {"Net": "deletes {markers}/deletes_a_file.victim at import (line 6)"},
    "forks": {"Net": "forks the process in effect (line 8)"},
    "forward_writes": {"Clean": None, "Logging": "writes {markers}/forward_writes in Logging.forward (line 22)"},
    "kills_the_parent": {"Net": "sends a signal to process {parent} in effect (line 10)"},
    "link_out_of_tmp": {"Net": "writes {markers}/link_out_of_tmp in effect (line 11)"},
    "opens_a_browser": {"Net": "opens a web browser (https://example.org/docs) in Net.__init__ (line 15)"},
    "new_session_process": {"Net": "starts a process (touch {markers}/new_session_process) in effect (line 9)"},
    "posixsubprocess_direct": {"Net": "starts a process in Unaudited._execute_child (line 16)"},
    "pty_spawn": {"Net": "forks the process at import (line 7)"},
    "queries_cuda_at_import": {"Net": "queries the CUDA device (torch.cuda.is_available) at import (line 5)"},
    "reads_a_fifo": {"Net": "reads the FIFO {markers}/reads_a_fifo.fifo, which waits for a writer in Net.__init__ (line 11)"},
    "socket_connect": {"Net": "looks up the network address of 127.0.0.1 in effect (line 9)"},
    "sqlite_file": {"Net": "opens the database {markers}/sqlite_file at import (line 7)"},
    "swallows_the_refusal": {"Net": "writes {markers}/swallows_the_refusal in effect (line 9)"},
    "thread_writes": {"Net": "starts a process (touch {markers}/thread_writes) in a thread it started"},
}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Every fixture audited as a whole file, in one run (the way `audit DIR` runs them), with a server
    listening where the network fixtures connect (once per test run, whatever the workers)."""

    def audit_all(folder):
        markers = folder / "markers"
        markers.mkdir()
        (markers / "deletes_a_file.victim").write_text("keep me")
        os.mkfifo(markers / "reads_a_fifo.fifo")
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            server.setblocking(False)
            port = server.getsockname()[1]
            done = cli("--format", "json", "--jobs", "2", *map(str, FILES),
                       env={"AUDITOR_TEST_MARKERS": str(markers), "AUDITOR_TEST_PORT": str(port)}, timeout=600)
            with pytest.raises(BlockingIOError):
                server.accept()  # nobody connected
        return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "markers": str(markers), "port": port}

    run = once_per_run(tmp_path_factory, "guard", audit_all)
    done = subprocess.CompletedProcess(["audit"], run["returncode"], run["stdout"], run["stderr"])
    results = {r["target"]: r for r in json.loads(done.stdout)["results"]}
    return done, results, Path(run["markers"]), run["port"]


def test_every_fixture_is_expected():
    assert sorted(p.stem for p in FILES) == sorted(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_the_guard_refuses_and_reports(audited, stem):
    done, results, markers, port = audited
    assert done.returncode == 0, done.stderr  # skipped models fail nothing; the others are clean
    label = f"{SHOWN}/{stem}.py"
    models = {target.split(":", 1)[1]: r for target, r in results.items() if target.startswith(f"{label}:")}
    assert set(models) == set(EXPECTED[stem])
    for name, refusal in EXPECTED[stem].items():
        result = models[name]
        if refusal is None:
            assert result["status"] == "ok", result
            continue
        what = refusal.format(markers=display_path(str(markers)), port=port, shown=SHOWN, parent="PID")
        assert result["status"] == "skipped", result
        assert re.sub(r"process \d+", "process PID", result["reason"]) == f"not audited: its code {what}; `audit {label}:{name}` " + (
            "audits it on purpose" if stem == "forward_writes" else "imports it on purpose")
    left = sorted(p.name for p in markers.iterdir() if p.name.startswith(stem))
    assert left == {"deletes_a_file": ["deletes_a_file.victim"], "reads_a_fifo": ["reads_a_fifo.fifo"]}.get(stem, [])
    assert not any(r["status"] == "error" for r in results.values()), done.stdout


def test_a_named_model_is_consent(tmp_path):
    """`file.py:NAME` runs the file's code as it is: its effects happen, and the model is audited."""
    done = cli("--format", "json", f"{HERE / 'io_open.py'}:Net", env={"AUDITOR_TEST_MARKERS": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in json.loads(done.stdout)["results"]] == ["ok"]
    assert (tmp_path / "io_open").exists()


def test_a_folder_audit_is_guarded(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("io_open.py", "clean_temporary_files.py"):
        (folder / name).write_bytes((HERE / name).read_bytes())
    done = cli("--format", "json", str(folder), env={"AUDITOR_TEST_MARKERS": str(tmp_path)})
    statuses = {Path(r["target"]).name: r["status"] for r in json.loads(done.stdout)["results"]}
    assert statuses == {"clean_temporary_files.py": "ok", "clean_temporary_files.py:Net": "ok", "io_open.py": "ok", "io_open.py:Net": "skipped"}
    assert not (tmp_path / "io_open").exists()
