"""Each target's code runs in a child process: what it prints, how it dies, how long it hangs and what it patches
never reach our output, our exit code or the next target. Real `audit` processes, since that is where it matters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditor.cli import audit_app
from auditor.config import parse_table
from auditor.errors import UsageError
from auditor.locations import display_path
from auditor.targets import FIXED_MANIFEST
from support import FIXTURES, alive, cli, wait_for

HERE = FIXTURES / "isolation"
SHOWN = display_path(str(HERE))  # how results name these files
NOISY = f"{HERE / 'noisy.py'}:Net"
CLEAN = FIXTURES / "rules" / "clean_mlp.py"


def _results(stdout: str) -> dict[str, dict]:
    return {r["target"]: r for r in json.loads(stdout)["results"]}


def test_deaths_become_errors_of_their_targets_and_the_others_still_count():
    deaths = {
        "exits_at_import.py": "exited with status 0 while importing",
        "exits_in_build.py": "exited with status 3 while building Net",
        "signal_in_forward.py": "killed by SIGTERM while capturing Net",
        "crash_in_build.py": "killed by SIGSEGV while building Net",
    }
    targets = [NOISY, *(f"{HERE / name}:Net" for name in deaths), f"{HERE / 'patches_torch.py'}:Net", str(CLEAN)]
    done = cli("--format", "json", "--fail-on", "warning", "--jobs", "3", *targets)
    assert done.returncode == 2, done.stderr
    results = _results(done.stdout)
    clean = display_path(str(CLEAN))
    assert list(results) == [f"{SHOWN}/{Path(t).name}" for t in targets[:-1]] + [clean, f"{clean}:build_model"]  # target order
    assert [f["code"] for f in results[f"{SHOWN}/noisy.py:Net"]["findings"]] == ["DRO001"]  # still counted
    for name, message in deaths.items():
        error = results[f"{SHOWN}/{name}:Net"]["error"]
        assert error.startswith(message), error
    assert "--verbose shows what it wrote" in results[f"{SHOWN}/crash_in_build.py:Net"]["error"]  # the fault handler's stack
    # the previous target replaced torch's default init in its own process only
    assert results[f"{clean}:build_model"]["findings"] == []
    assert [line.split(": ")[2] for line in done.stderr.splitlines()] == [f"{SHOWN}/{name}:Net" for name in deaths]
    assert "Traceback" not in done.stderr


def test_hangs_are_stopped_at_the_timeout_naming_what_they_were_doing():
    """Only the hangs run under the short limit: how long a healthy target takes on a busy machine is no part
    of what this checks."""
    hangs = {"hangs_at_import.py": "timed out after 8 s while importing", "hangs_in_forward.py": "timed out after 8 s while capturing Net"}
    done = cli("--format", "json", "--timeout", "8", "--jobs", "2", *(f"{HERE / name}:Net" for name in hangs))
    assert done.returncode == 2, done.stderr
    results = _results(done.stdout)
    for name, message in hangs.items():
        error = results[f"{SHOWN}/{name}:Net"]["error"]
        assert error.startswith(message), error
        assert "--timeout SECONDS" in error
    assert "Traceback" not in done.stderr


def test_what_the_users_code_writes_never_reaches_stdout_and_the_parent_never_runs_it():
    # `audit --format json` run by main() in a plain process, which then says what it imported
    probe = (
        "import sys\n"
        "from auditor.cli import main\n"
        f"sys.argv = ['audit', '--format', 'json', {NOISY!r}]\n"
        "try:\n    main()\n"
        "except SystemExit as exit:\n"
        "    sys.stderr.write(f\"exit {exit.code} {'torch' in sys.modules} {any('noisy' in m for m in sys.modules)}\")\n"
    )
    document = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert document.stderr == "exit 0 False False"  # nothing shown without --verbose; no torch, no user module here
    assert [f["code"] for f in _results(document.stdout)[f"{SHOWN}/noisy.py:Net"]["findings"]] == ["DRO001"]

    sarif = cli("--format", "sarif", "--verbose", NOISY)
    assert [r["ruleId"] for r in json.loads(sarif.stdout)["runs"][0]["results"]] == ["DRO001"]
    shown = sarif.stderr.splitlines()
    start = shown.index(f"audit: output of {SHOWN}/noisy.py:Net:")
    assert shown[start + 1:start + 6] == ["  | print at import", "  | fd 1 at import", "  | stderr at import", "  | fd 2 at import", "  | print in __init__"]
    assert "  | fd 1 in forward" in shown


def test_fix_with_jobs_stages_in_children_and_commits_one_out_folder(tmp_path):
    out = tmp_path / "out"
    other = FIXTURES / "rules" / "dro001_modules.py"
    done = CliRunner().invoke(audit_app, [NOISY, f"{other}:Head", "--fix", "--out", str(out), "--jobs", "2", "--format", "json"])
    assert done.exit_code == 0, done.output
    fixed = {r["target"]: r for r in json.loads(done.stdout)["results"]}
    assert {Path(r["fixed_path"]).name for r in fixed.values()} == {"Net", "Head"}
    assert json.loads((out / FIXED_MANIFEST).read_text())["models"] == ["Head", "Net"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    assert all(f["code"] == "DRO001" for r in fixed.values() for f in r["fixes"])


def _start_hanging(tmp_path: Path, *args: str, model: str = "hangs_in_forward.py", env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], Path]:
    """`audit` with a model whose forward never returns; returns once that forward runs (it writes its pid)."""
    marker = tmp_path / "pid"
    command = [sys.executable, "-m", "auditor", "--timeout", "0", *args, f"{HERE / model}:Net"]
    process = subprocess.Popen(command, env={**os.environ, "AUDITOR_TEST_MARKER": str(marker), **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: marker.exists() and marker.read_text() != "", seconds=180)  # a ceiling: fork server, build, inputs on a busy machine
    return process, marker


def _left_behind(pids_file: Path) -> list[int]:
    """The processes `leaves_processes.py` started that still run (zombies count as ended)."""
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    return [pid for pid in pids if alive(pid) and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]


def test_ctrl_c_kills_the_children_and_leaves_no_staging_folder(tmp_path):
    process, marker = _start_hanging(tmp_path, "--fix", "--out", str(tmp_path / "out"), "--jobs", "2", NOISY)
    wait_for(lambda: any(p.name.startswith(".out.auditor-") and any(p.iterdir()) for p in tmp_path.iterdir()))  # Net staged
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pid"]
    wait_for(lambda: not alive(int(marker.read_text())), seconds=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreapers are Linux's")
def test_no_process_a_target_started_outlives_it_even_in_a_session_of_its_own(tmp_path):
    pids = tmp_path / "pids"
    done = cli("--format", "json", f"{HERE / 'leaves_processes.py'}:Net", f"{HERE / 'holds_a_thread.py'}:Net", CLEAN.as_posix(),
               env={"AUDITOR_TEST_PIDS": str(pids)}, timeout=100)  # a held run would take the whole --timeout (300 s)
    assert done.returncode == 0, done.stderr
    assert {r["status"] for r in _results(done.stdout).values()} == {"ok"}
    wait_for(lambda: not _left_behind(pids), seconds=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreapers are Linux's")
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda n: signal.Signals(n).name)
def test_a_signal_ends_the_run_with_its_cleanup(tmp_path, number):
    """Ctrl-C, SIGTERM and SIGHUP during --fix: the children and everything they started end, and neither the
    staging folder nor multiprocessing's temporary folder is left."""
    temporary, work = tmp_path / "tmp", tmp_path / "work"
    temporary.mkdir()
    work.mkdir()
    pids = tmp_path / "pids"
    process, marker = _start_hanging(work, "--fix", "--out", str(work / "out"), "--jobs", "2", NOISY, model="leaves_processes.py",
                                     env={"AUDITOR_TEST_PIDS": str(pids), "TMPDIR": str(temporary)})
    wait_for(lambda: any(p.name.startswith(".out.auditor-") and any(p.iterdir()) for p in work.iterdir()), seconds=180)  # Net staged
    process.send_signal(number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + number, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in work.iterdir()) == ["pid"]
    assert list(temporary.iterdir()) == []  # no pymp-* folder
    wait_for(lambda: not alive(int(marker.read_text())) and not _left_behind(pids), seconds=10)


def test_a_deep_temporary_folder_still_runs_the_fork_server(tmp_path):
    """The fork server's socket lives under TMPDIR, and a socket path holds 107 bytes: a deep TMPDIR ended the
    run in 'internal error: AF_UNIX path too long'."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    done = cli("--jobs", "2", "--no-cache", f"{NOISY}", CLEAN.as_posix(), env={"TMPDIR": str(deep)})
    assert done.returncode == 0, done.stderr
    assert "internal error" not in done.stderr and "Found 0 errors, 1 warning" in done.stdout


def test_a_killed_parent_takes_its_children_with_it(tmp_path):
    process, marker = _start_hanging(tmp_path)
    process.kill()
    process.communicate(timeout=60)
    wait_for(lambda: not alive(int(marker.read_text())), seconds=30)


def test_the_fork_server_never_touches_cuda():
    """Children can use CUDA only if the server they are forked from never initialized it: importing all it
    may preload calls no CUDA function."""
    code = (
        "import importlib, torch\n"
        "calls = []\n"
        "for name in ('is_available', 'device_count', '_lazy_init', 'init', 'current_device', 'get_device_properties'):\n"
        "    setattr(torch.cuda, name, lambda *a, name=name, **k: calls.append(name))\n"
        "from auditor.options import FixOptions, Options\n"
        "from auditor.runner import preload\n"
        "for module in preload(Options(probe=True, fix=FixOptions(out=None)), children=99):\n"
        "    importlib.import_module(module)\n"
        "print(calls)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.cuda
def test_children_use_cuda():
    every_capture = [NOISY, str(FIXTURES / "models" / "data_dependent.py"), str(CLEAN)]  # fx, hooks, fx
    export_first = ["--capture", "export", NOISY, str(CLEAN)]  # the server preloads torch.export's machinery too
    for args in (every_capture, export_first):
        done = cli("--device", "cuda", "--format", "json", *args)
        assert done.returncode == 0, done.stderr
        assert {r["status"] for r in json.loads(done.stdout)["results"]} == {"ok"}


@pytest.mark.parametrize(("args", "message"), [
    (["--jobs", "0"], "--jobs 0: expected a number of processes, 1 or more"),
    (["--timeout", "-1"], "--timeout -1: expected seconds from 0 (no limit) to 604800 (a week)"),
])
def test_limits_are_checked(args, message):
    done = CliRunner().invoke(audit_app, [*args, str(CLEAN)])
    assert done.exit_code == 2 and done.stderr.strip() == f"audit: error: {message}"


def test_timeout_in_the_config():
    assert parse_table({"timeout": 600}, Path("pyproject.toml")).timeout == 600
    assert parse_table({"timeout": 0}, Path("pyproject.toml")).timeout == 0
    with pytest.raises(UsageError, match="timeout in pyproject.toml: 'long': expected seconds"):
        parse_table({"timeout": "long"}, Path("pyproject.toml"))
