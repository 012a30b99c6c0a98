"""`--executor dask`: each target's models audited on a Dask cluster, in a child process of a worker, with the
results, output and exit code `--jobs` gives; unchanged targets still answered here from the cache. The runs
on a local cluster start worker processes that each import torch, so they are opt-in (--run-slow); the usage
errors run by default."""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditor.cache import ResultCache, folder_chooser
from auditor.cli import audit_app
from auditor.runner import run_targets
from auditor.targets import parse_target
from support import FIXTURES, alive, cli, options, wait_for

ISOLATION = FIXTURES / "isolation"
BROKEN = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        raise RuntimeError("bad width")

    def forward(self, x):
        return self.fc(x)
'''
needs_distributed = pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="needs auditor[dask]")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Clean, faulty, failing-to-build and noisy models, as a project's folder."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("clean_mlp.py", "dro001_modules.py"):
        (models / name).write_text((FIXTURES / "rules" / name).read_text())
    (models / "noisy.py").write_text((ISOLATION / "noisy.py").read_text())
    (models / "broken.py").write_text(BROKEN.lstrip())
    return models


@pytest.mark.slow
@needs_distributed
@pytest.mark.parametrize("output", [["--format", "json", "--verbose"], ["--format", "text"]])
def test_a_local_cluster_gives_what_jobs_gives(folder: Path, output: list[str]) -> None:
    targets = [".", "noisy.py:Net"]  # the folder leaves noisy.py unimported (it writes at import); named, it is audited
    local = cli(*output, "--jobs", "2", *targets, cwd=folder, timeout=300)
    remote = cli(*output, "--executor", "dask", "--jobs", "2", *targets, cwd=folder, timeout=300)
    assert (remote.returncode, remote.stdout, remote.stderr) == (local.returncode, local.stdout, local.stderr)
    assert remote.returncode == 2  # broken.py:Net
    if output[1] == "json":
        results = {r["target"]: r for r in json.loads(remote.stdout)["results"]}
        assert results["clean_mlp.py:build_model"]["findings"] == []
        assert {f["code"] for f in results["dro001_modules.py:Head"]["findings"]} == {"DRO001"}
        assert [f["code"] for f in results["noisy.py:Net"]["findings"]] == ["DRO001"]
        assert results["broken.py:Net"]["error"] == "broken.py:8: building Net failed: RuntimeError: bad width"
        assert "  | print in __init__" in remote.stderr.splitlines()  # what the worker's child wrote, shown here


@pytest.mark.slow
@needs_distributed
def test_deaths_and_hangs_on_a_worker_are_their_targets_errors(tmp_path: Path) -> None:
    deaths = {
        "exits_in_build.py": "exited with status 3 while building Net",
        "crash_in_build.py": "killed by SIGSEGV while building Net",
        "hangs_in_forward.py": "timed out after 8 s while capturing Net",
    }
    done = cli("--format", "json", "--executor", "dask", "--jobs", "2", "--timeout", "8", *(f"{ISOLATION / name}:Net" for name in deaths),
               cwd=ISOLATION, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = {r["target"]: r["error"] for r in json.loads(done.stdout)["results"]}
    assert [errors[f"{name}:Net"].split(" (")[0].split(";")[0] for name in deaths] == list(deaths.values())


@pytest.mark.slow
@needs_distributed
def test_the_cache_answers_here_and_sends_only_what_changed(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.executors.dask import DaskExecutor

    monkeypatch.chdir(folder)

    def audited() -> tuple[list[str], list[dict], bool]:
        """The targets sent to the cluster, the results, and whether the cluster was reached at all."""
        sent: dict[str, None] = {}
        run_options = options()
        executor = DaskExecutor(workers=1)
        try:
            results = run_targets(parse_target("."), run_options, cache=ResultCache(run_options, folder_chooser(None, None)), executor=executor,
                                  progress=sent.setdefault)
            return list(sent), [r.to_json() for r in results], executor.client is not None
        finally:
            executor.close()

    sent, cold, connected = audited()
    assert connected and len(sent) == 4
    assert audited() == ([], cold, False)  # every target answered here: no cluster started
    (folder / "clean_mlp.py").write_text((folder / "clean_mlp.py").read_text() + "\n# edited\n")
    assert audited() == (["clean_mlp.py"], cold, True)


@pytest.mark.slow
@needs_distributed
def test_workers_that_cannot_start_processes_are_named_with_the_remedy(folder: Path) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster:  # daemonic workers
        done = cli("--format", "json", "--executor", "dask", "--scheduler", cluster.scheduler_address, "clean_mlp.py", cwd=folder, timeout=300)
    assert done.returncode == 2
    source, models = json.loads(done.stdout)["results"]
    assert (source["target"], source["status"]) == ("clean_mlp.py", "ok")  # the source checks ran here
    error = models["error"]  # the file's models, as a local child's death is reported
    assert "is a daemonic process" in error and error.endswith("start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False")


@needs_distributed
def test_a_scheduler_that_cannot_be_reached_is_a_usage_error() -> None:
    done = cli("--executor", "dask", "--scheduler", "tcp://127.0.0.1:1", str(FIXTURES / "rules" / "clean_mlp.py"),
               env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("audit: error: --scheduler tcp://127.0.0.1:1: cannot reach a Dask scheduler there (Timed out")
    assert done.stderr.count("\n") == 1  # one line, no traceback


@needs_distributed
def test_dasks_configured_scheduler_address_is_used_without_scheduler() -> None:
    done = cli("--executor", "dask", str(FIXTURES / "rules" / "clean_mlp.py"),
               env={"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:1", "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("audit: error: Dask's scheduler-address (DASK_SCHEDULER_ADDRESS) tcp://127.0.0.1:1: cannot reach a Dask "
                                  "scheduler there (Timed out")
    assert done.stderr.count("\n") == 1


def test_without_the_extra_dask_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    done = CliRunner().invoke(audit_app, ["--executor", "dask", str(FIXTURES / "rules" / "clean_mlp.py")])
    assert done.exit_code == 2
    assert done.stderr == "audit: error: --executor dask needs Dask's distributed, which is not installed: pip install 'auditor[dask]'\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--scheduler", "tcp://10.0.0.5:8786"], "--scheduler goes with --executor dask"),
    (["--executor", "ray"], "--executor 'ray': expected 'local' or 'dask'"),
    (["--executor", "dask", "--scheduler", "tcp://10.0.0.5:8786", "--jobs", "4"],
     "--jobs sizes the local cluster; with --scheduler, the cluster's workers decide how many targets run at once"),
    (["--executor", "dask", "--fix", "--out", "fixed"], "--fix writes its files from this machine: run it with --jobs, not --executor dask"),
    (["--executor", "dask", "--fix"], "--fix writes its files from this machine: run it with --jobs, not --executor dask"),
    (["--executor", "dask", "--diff"], "--diff reads its files from this machine: run it with --jobs, not --executor dask"),
])
def test_executor_options_are_checked(args: list[str], message: str) -> None:
    done = CliRunner().invoke(audit_app, [*args, str(FIXTURES / "rules" / "clean_mlp.py")])
    assert done.exit_code == 2 and done.stderr == f"audit: error: {message}\n"


@pytest.mark.slow
@needs_distributed
def test_an_interrupted_run_stops_its_children_on_a_running_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster that outlives the run (not the local one, whose end would end its workers' children anyway)."""
    import dask
    from distributed import LocalCluster

    marker = tmp_path / "child.pid"
    monkeypatch.setenv("AUDITOR_TEST_MARKER", str(marker))  # the hang writes its process id there; workers inherit it
    with dask.config.set({"distributed.worker.daemon": False}), LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                                                                             silence_logs=logging.CRITICAL) as cluster:
        run = subprocess.Popen([sys.executable, "-m", "auditor", "--executor", "dask", "--scheduler", cluster.scheduler_address, "--timeout", "0",
                                f"{ISOLATION / 'hangs_in_forward.py'}:Net"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: marker.exists() and marker.read_text() != "", seconds=240)
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=60)
        wait_for(lambda: not alive(int(marker.read_text())), seconds=30)  # STOP_POLL seconds at most, and the kill
