"""The `audit` command: a thin layer over the engine. Data goes to stdout, people's messages to stderr.

`audit rules` and `audit explain` are dispatched before the main command, since `audit` itself takes free
positional targets.
"""

from __future__ import annotations

import functools
import json
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer

from auditor import __version__
from auditor import baseline as baselines
from auditor.config import Config, find_pyproject, load_config, validate_settings
from auditor.errors import UsageError, first_line
from auditor.findings import Report, Severity
from auditor.limits import MAX_NESTING, check_nesting, check_timeout
from auditor.options import CAPTURE_METHODS, FixOptions, Options
from auditor.report import FORMATS
from auditor.report.terminal import StdoutClosed, Terminal, discard, ensure_stdout, printable
from auditor.selection import Selection, is_valid_selector

EPILOG = "Other commands: `audit rules` lists every rule; `audit explain CODE` explains one."
audit_app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})
rules_app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


def main() -> None:
    """Console-script entry point. A bug of the tool's still ends in one line (the traceback with --verbose)."""
    argv = sys.argv[1:]
    app = rules_app if argv and argv[0] in ("rules", "explain") else audit_app
    ensure_stdout()
    _exit_on_termination()
    try:
        app(args=argv, prog_name="audit")
    except (UsageError, StdoutClosed) as exc:  # a bad rule pack, or a report with nowhere to go
        _say(f"audit: error: {exc}")
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - last resort: never a bare traceback
        if "--verbose" in argv or "-v" in argv:
            raise
        _say(f"audit: internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --verbose for the traceback)")
        sys.exit(2)


def _say(line: str) -> None:
    """One line on stderr, if there is a stderr (`2>&-` closes it)."""
    if sys.stderr is not None:
        sys.stderr.write(printable(line) + "\n")


def _exit_on_termination() -> None:
    """SIGTERM and SIGHUP end the command as Ctrl-C does: through its cleanup (children and what they started
    are ended, `--out`'s staging folder and multiprocessing's temporary folder removed), exiting 128 + the
    signal's number. A handler someone else installed is left alone; a second signal during the cleanup is
    ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]

    def terminate(number: int, frame: Any) -> NoReturn:
        for name in names:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        raise SystemExit(128 + number)

    for name in names:
        if signal.getsignal(getattr(signal, name)) is signal.SIG_DFL:
            signal.signal(getattr(signal, name), terminate)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"auditor {__version__}")
        raise typer.Exit()


@audit_app.command(epilog=EPILOG)
def audit(
    targets: Annotated[Optional[list[str]], typer.Argument(help="model.py, model.py:NAME, package.module:NAME, program.pt2 or DIR. Default: the targets in [tool.auditor].", show_default=False)] = None,
    inputs: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="[DTYPE:]D0,D1,... for each positional forward input, e.g. 2,3,224,224 or long:2,128.", show_default=False)] = None,
    kwargs: Annotated[Optional[str], typer.Option("--kwargs", help="JSON object of arguments for the class or factory, e.g. '{\"depth\": 18}'.", show_default=False)] = None,
    probe: Annotated[bool, typer.Option("--probe", help="Run the dynamic probes (gradients, mixed precision, clipping).")] = False,
    fix: Annotated[bool, typer.Option("--fix", help="Fix what can be fixed in your own files, in place (minimal edits that keep formatting, re-audited, rolled back when the model no longer builds). With --out DIR: write a fixed copy of the model instead.")] = False,
    unsafe_fixes: Annotated[bool, typer.Option("--unsafe-fixes", help="With --fix or --diff: also the fixes that change what the model or script computes (re-inits, dropout past a non-linear activation, ...).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="With --fix: write fixed copies of the models to this folder (models without source: .pt2, pickles, configs) and leave your files alone.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="With --fix --out: overwrite an existing --out folder.")] = False,
    shortcut: Annotated[str, typer.Option("--shortcut", help="RES001 fix: 'conv' (1x1 conv + BN) or 'pad' (zero-pad, parameter-free).")] = "conv",
    skip_concat: Annotated[str, typer.Option("--skip-concat", help="RES004 fix: 'pad' the smaller operand of a skip concatenation (zero-pad) or center-'crop' the larger.")] = "pad",
    diff: Annotated[bool, typer.Option("--diff", help="Print the unified diff of the edits --fix would make to your files and write nothing (exit 1 when there is something to fix). With --fix --out: the generated code before and after.")] = False,
    output_format: Annotated[str, typer.Option("--format", help="text, json, sarif or github.")] = "text",
    select: Annotated[Optional[list[str]], typer.Option("--select", help="Codes, prefixes or ALL (comma-separated).", show_default=False)] = None,
    ignore: Annotated[Optional[list[str]], typer.Option("--ignore", help="Codes or prefixes to skip (comma-separated).", show_default=False)] = None,
    fail_on: Annotated[Optional[str], typer.Option("--fail-on", help="Exit 1 on findings at or above: error (default), warning or info.", show_default=False)] = None,
    baseline_file: Annotated[Optional[Path], typer.Option("--baseline", help="Findings recorded in this file (by --write-baseline) do not count; only new ones are reported. Default: `baseline` in [tool.auditor].", show_default=False)] = None,
    write_baseline: Annotated[Optional[Path], typer.Option("--write-baseline", help="Record the current findings in this file and exit 0.", show_default=False)] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="Config file (default: [tool.auditor] in the nearest pyproject.toml).", show_default=False)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda when available).", show_default=False)] = None,
    clip_norm: Annotated[Optional[float], typer.Option("--clip-norm", help="With --probe: the gradient-clipping threshold to evaluate.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="With --probe: write the per-layer chart to this PNG (needs matplotlib).", show_default=False)] = None,
    capture_method: Annotated[Optional[str], typer.Option("--capture", help="Force one capture method: fx, export or hooks (default: the first that works, in that order).", show_default=False)] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow loading pickled models (.pt/.pth) and the pickled parts of .pt2 programs, which runs any code they contain.")] = False,
    meta: Annotated[bool, typer.Option("--meta", help="Audit the structure without materializing weights (meta device; init rules read the recorded init calls).")] = False,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="Audit models whose weights exceed SIZE (e.g. 8GiB, 500MB) on meta. Default: 1/8 of available memory.", show_default=False)] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Audit this many targets at once (each in a process of its own either way); output stays in target order. With --executor dask and no --scheduler: the local cluster's worker count. [default: 1]", show_default=False)] = None,
    executor_name: Annotated[str, typer.Option("--executor", help="Where targets are audited: 'local' (child processes here) or 'dask' (a Dask cluster; needs auditor[dask]).")] = "local",
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="With --executor dask: the scheduler's address, e.g. tcp://10.0.0.5:8786. Default: DASK_SCHEDULER_ADDRESS, else a local cluster.", show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", envvar="AUDIT_NO_CACHE", help="Audit every target again, neither reading nor writing the result cache.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", envvar="AUDIT_CACHE_DIR", help="Folder of the result cache. Default: `cache-dir` in [tool.auditor], else .audit_cache at the project root.", show_default=False)] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Seconds one target may take (import, build, capture, probes, fix) before it is stopped; 0 for no limit. [default: 300]", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only findings; no summary or progress.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Capture notes, timings, and tracebacks for failures.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Audit PyTorch models for missing or misplaced training tricks."""
    err = Terminal(stderr=True, soft_wrap=True, emoji=False, markup=False, highlight=False)  # user text stays literal
    try:
        runs = []
        for config, group in _configured(targets, config_file):
            options = _options(config, inputs, kwargs, probe, fix, out, force, shortcut, skip_concat, diff, output_format, select, ignore, fail_on, device, clip_norm, plot, trust_pickle, verbose, unsafe_fixes)
            if capture_method is not None:
                options.capture = _capture_methods(capture_method)
            options.meta, options.max_memory = _weights(meta, max_memory, options, config)
            target_list, base = _targets(group, config)
            limit = _timeout(timeout, config)
            if options.fix is not None and options.fix.out is not None:
                _check_out(options.fix.out, [t.target for t in target_list])
                _check_replaceable(options.fix.out, options.fix.force)
            baseline_path = None if write_baseline is not None else baseline_file or config.baseline
            recorded = baselines.load(baseline_path) if baseline_path is not None else None
            cache = None if no_cache else _result_cache(options, cache_dir or config.cache_dir, config.path)
            runs.append((target_list, base, options, config, baseline_path, recorded, limit, cache))
        if len(runs) > 1 and (fix or diff):
            raise UsageError(f"{'--fix' if fix else '--diff'}: the targets fall under different configurations (pyproject.toml files); fix one project at a time")
        executor = _executor(executor_name, scheduler, jobs, "--fix" if fix else "--diff" if diff else None)
    except UsageError as exc:
        _usage_error(err, exc)
    report, exit_code = Report(), 0
    try:
        for target_list, base, options, config, baseline_path, recorded, limit, cache in runs:  # each judged by its own project's configuration
            part = _run(target_list, base, options, config, err, quiet or output_format != "text", executor, limit, cache)
            if recorded is not None:
                baselines.apply(part, recorded, baseline_path, options)
            exit_code = max(exit_code, part.exit_code(options.fail_on))
            _merge(report, part)
    except UsageError as exc:  # found once the files are read (--kwargs that no model takes) or a target needs the cluster
        _usage_error(err, exc)
    finally:
        executor.close()
    if write_baseline is not None:
        try:
            written = baselines.write(report, write_baseline)
        except UsageError as exc:
            _usage_error(err, exc)
    if report.edited is not None and not report.edited.written:  # --diff: the edits, and nothing written
        exit_code = _emit_source_diff(report, output_format, quiet, err)
    else:
        _emit(report, output_format, quiet, verbose, diff=options.fix is not None and options.fix.diff)
    if options.plot is not None:
        _plot(report, options.plot, err)
    for result in report.failed_targets:
        said = result.error or ""
        named = not result.target or said.startswith(result.target + ":")  # the message names its target already
        err.print(f"audit: error: {said if named else f'{result.target}: {said}'}", style="red")
        if result.traceback:
            err.print(result.traceback)
    if write_baseline is not None:
        err.print(f"audit: recorded {written} finding{'s' if written != 1 else ''} in the baseline {write_baseline}")
        raise typer.Exit(2 if report.failed_targets else 0)
    raise typer.Exit(exit_code)


def _usage_error(err: Terminal, exc: UsageError) -> NoReturn:
    err.print(f"audit: error: {exc}", style="red")
    raise typer.Exit(2) from None


def _merge(report: Report, part: Report) -> None:
    """One configuration's results into the run's report (baselines: hidden counts add up, stale entries join)."""
    report.results.extend(part.results)
    report.edited = report.edited or part.edited  # --fix in place runs one configuration
    if part.baseline is None:
        return
    if report.baseline is None:
        report.baseline = part.baseline
    else:
        report.baseline.hidden += part.baseline.hidden
        report.baseline.stale.extend(part.baseline.stale)


def _run(targets: list[Any], base: Path | None, options: Options, config: Config, err: Terminal, silent: bool, executor: Any, timeout: float,
         cache: Any) -> Report:
    """Each target's models are audited in a child process (`auditor.runner`) where `executor` runs them, unless
    `cache` (a ResultCache, or None) has their results; what the user's code wrote is shown on stderr with
    --verbose, never on stdout. `--fix` in place audits again after editing (`auditor.sourcefix.session`)."""
    from auditor.engine import resolve_targets
    from auditor.runner import run_targets

    parsed, errors = resolve_targets(targets, config.exclude, base)
    run = functools.partial(run_targets, parsed, options, executor=executor, timeout=timeout, show_output=_show_output(err) if options.verbose else None,
                            cache=cache)
    if not (silent or not err.is_terminal or not parsed):
        from rich.text import Text

        with err.status("auditing", spinner="dots") as status:  # Text: a file name is never markup or emoji
            return _audited(errors, functools.partial(run, progress=lambda text: status.update(Text(f"auditing {text}"))), options, parsed)
    return _audited(errors, run, options, parsed)


def _audited(errors: list[Any], run: Any, options: Options, parsed: list[Any]) -> Report:
    if options.fix is None or not options.fix.source:
        return Report(errors + run())
    from auditor.sourcefix.session import fix_in_place

    roots = [t.path if t.path.is_dir() else t.path.parent for t in parsed if t.path is not None]
    results, edited = fix_in_place(options.fix, run, roots)
    return Report(errors + results, edited=edited)


def _result_cache(options: Options, named: Path | None, config_file: Path | None) -> Any:
    """The result cache of one configuration's targets; none with --fix or --diff, which must run for what they
    write or show."""
    if options.fix is not None:
        return None
    from auditor.cache import ResultCache, folder_chooser

    return ResultCache(options, folder_chooser(named, config_file))


def _show_output(err: Terminal) -> Any:
    def show(label: str, text: str) -> None:
        err.print(f"audit: output of {label}:")
        err.print("\n".join(f"  | {line}" for line in text.splitlines()))

    return show


def _timeout(timeout: float | None, config: Config) -> float:
    from auditor.runner import DEFAULT_TIMEOUT

    if timeout is not None:
        return check_timeout(timeout, "--timeout")
    return config.timeout if config.timeout is not None else DEFAULT_TIMEOUT


def _executor(name: str, scheduler: str | None, jobs: int | None, fixing: str | None) -> Any:
    """Where the targets' child processes run: `jobs` at once here, or on a Dask cluster (which is only
    reached once a target needs it, so that a run answered from the cache starts none). `fixing` (--fix or
    --diff) keeps them here: the edits are planned on, and written to, this machine's files."""
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs {jobs}: expected a number of processes, 1 or more")
    if name == "local":
        if scheduler is not None:
            raise UsageError("--scheduler goes with --executor dask")
        from auditor.runner import Processes

        return Processes(jobs or 1)
    if name != "dask":
        raise UsageError(f"--executor {name!r}: expected 'local' or 'dask'")
    if fixing is not None:
        raise UsageError(f"{fixing} {'writes' if fixing == '--fix' else 'reads'} its files from this machine: run it with --jobs, not --executor dask")
    if scheduler is not None and jobs is not None:
        raise UsageError("--jobs sizes the local cluster; with --scheduler, the cluster's workers decide how many targets run at once")
    if scheduler is not None and not scheduler.strip():
        raise UsageError("--scheduler: expected an address such as tcp://10.0.0.5:8786")
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise UsageError("--executor dask needs Dask's distributed, which is not installed: pip install 'auditor[dask]'")
    from auditor.executors.dask import DaskExecutor

    return DaskExecutor(scheduler, workers=jobs)


def _emit(report: Report, output_format: str, quiet: bool, verbose: bool, diff: bool = False) -> None:
    if output_format == "text":
        from auditor.report.text import print_report

        print_report(report, Terminal(highlight=False, soft_wrap=True, emoji=False, markup=False), quiet=quiet, verbose=verbose, diff=diff)
        return
    from auditor.report import renderer

    _write(renderer(output_format)(report) + "\n")
    if diff:  # stdout holds the document: the generated code's diff goes to stderr
        for result in report.results:
            if result.fix_diff:
                sys.stderr.write(printable(result.fix_diff))


def _write(text: str) -> None:
    """Data on stdout. A reader that went away (`| head`) is no error: the rest is discarded and the command ends
    with its own exit code (click would exit 1, which reads as "findings")."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        discard(sys.stdout)


def _emit_source_diff(report: Report, output_format: str, quiet: bool, err: Terminal) -> int:
    """--diff: the unified diff of the edits on stdout (a JSON/SARIF document keeps stdout; the diff then goes to
    stderr), a one-line summary on stderr. Exit 1 when there is something to fix, 2 when a target failed."""
    edited = report.edited
    diff = "".join(edited.diffs)
    if output_format == "text":  # raw, as ruff's: a patch that `git apply` takes, carriage returns included
        _write(diff)
    else:
        from auditor.report import renderer

        _write(renderer(output_format)(report) + "\n")
        sys.stderr.write(diff)
    if not quiet:
        from auditor.report.text import edited_summary

        err.print(edited_summary(edited))
    if report.failed_targets:
        return 2
    return 1 if diff else 0


def _plot(report: Report, path: Path, err: Terminal) -> None:
    from auditor.report.plot import write_chart

    try:
        written = write_chart(report, path)
    except OSError as exc:
        err.print(f"audit: error: --plot {path}: {exc}", style="red")
        raise typer.Exit(2) from None
    if not written:
        err.print(f"audit: note: --plot {path}: no probe results to chart")


def _configured(targets: list[str] | None, config_file: Path | None) -> list[tuple[Config, list[str] | None]]:
    """The configuration of each TARGET: --config for all; else, as ruff does for each file, the nearest
    pyproject.toml with [tool.auditor] from the target's own folder upward. Targets sharing a file form one
    group, in order of first appearance. With no TARGET: the file found from the working directory."""
    if config_file is not None:
        return [(load_config(config_file, explicit=True), targets)]
    if not targets:
        return [(load_config(find_pyproject(Path.cwd())), None)]
    grouped: dict[Path | None, list[str]] = {}
    found: dict[Path, Path | None] = {}
    for text in targets:
        folder = _folder_of(text)
        if folder not in found:
            found[folder] = find_pyproject(folder)
        grouped.setdefault(found[folder], []).append(text)
    return [(load_config(path), group) for path, group in grouped.items()]


def _folder_of(text: str) -> Path:
    """Where a target's configuration search starts: its folder (a directory: itself); the working directory
    for an importable module."""
    path = _location(text)
    if _exists(path):
        return path.resolve() if path.is_dir() else path.resolve().parent
    return Path.cwd()


def _location(text: str) -> Path:
    """The file or folder a TARGET names, without its `:NAME`."""
    return Path(text.rsplit(":", 1)[0] if ":" in text and not _exists(Path(text)) else text)


def _exists(path: Path) -> bool:
    """Whether a path exists; False where this user may not look (inside a mode-000 folder): the target then fails
    with its own error line."""
    try:
        return path.exists()
    except OSError:
        return False


def _options(
    config: Config, inputs: list[str] | None, kwargs: str | None, probe: bool, fix: bool, out: Path | None, force: bool,
    shortcut: str, skip_concat: str, diff: bool, output_format: str, select: list[str] | None, ignore: list[str] | None,
    fail_on: str | None, device: str | None, clip_norm: float | None, plot: Path | None, trust_pickle: bool, verbose: bool,
    unsafe_fixes: bool = False,
) -> Options:
    from auditor.specs import parse_spec
    from auditor.rule import all_rules, default_settings

    if output_format not in FORMATS:
        raise UsageError(f"--format {output_format!r}: expected one of {', '.join(FORMATS)}")
    known = [(r.code, r.name) for r in all_rules()]
    selection = Selection(
        select=_selectors(select, "--select", known) if select else _checked(config.select, "select", known, config),
        ignore=_selectors(ignore, "--ignore", known) if ignore else _checked(config.ignore, "ignore", known, config),
        per_module_ignores=config.per_module_ignores,
    )
    settings = validate_settings(config.settings, default_settings(), f"in {config.path}" if config.path else "")
    if clip_norm is not None:
        if not probe:
            raise UsageError("--clip-norm needs --probe")
        if not 0 < clip_norm < math.inf:
            raise UsageError(f"--clip-norm {clip_norm}: expected a positive number")
        settings["clip-norm"] = clip_norm
    if plot is not None:
        if not probe:
            raise UsageError("--plot needs --probe")
        _require_matplotlib()
    fix_options = _fix_options(fix, out, force, shortcut, skip_concat, diff, unsafe_fixes)
    try:
        threshold = Severity.parse(fail_on) if fail_on else config.fail_on
    except ValueError as exc:
        raise UsageError(f"--fail-on: {exc}") from None
    for spec in inputs or []:
        parse_spec(spec)  # malformed specs stop the run before any target is loaded
    if device is not None and device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: expected 'cpu' or 'cuda'")
    if (device or config.device) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available here")
    return Options(
        selection=selection, settings=settings, fail_on=threshold, inputs=list(inputs or []), kwargs=_kwargs(kwargs),
        probe=probe, plot=plot, fix=fix_options, device=device or config.device, trust_pickle=trust_pickle, verbose=verbose,
    )


def _fix_options(fix: bool, out: Path | None, force: bool, shortcut: str, skip_concat: str, diff: bool, unsafe: bool) -> FixOptions | None:
    """`--fix` edits the user's files; `--diff` shows those edits; `--fix --out DIR` writes fixed copies."""
    if not (fix or diff):
        for flag, given in (("--out", out is not None), ("--unsafe-fixes", unsafe), ("--force", force)):
            if given:
                raise UsageError(f"{flag} goes with --fix")
        return None
    if shortcut not in ("conv", "pad"):
        raise UsageError(f"--shortcut {shortcut!r}: expected 'conv' or 'pad'")
    if skip_concat not in ("pad", "crop"):
        raise UsageError(f"--skip-concat {skip_concat!r}: expected 'pad' or 'crop'")
    if out is not None:
        if not fix:
            raise UsageError("--out goes with --fix")
        if unsafe:
            raise UsageError("--unsafe-fixes goes with --fix without --out (a fixed copy applies every fix)")
        return FixOptions(out=out, force=force, shortcut=shortcut, skip_concat=skip_concat, diff=diff)
    if force:
        raise UsageError("--force goes with --fix --out DIR")
    return FixOptions(out=None, shortcut=shortcut, skip_concat=skip_concat, diff=diff, source=True, unsafe=unsafe)


def _weights(meta: bool, max_memory: str | None, options: Options, config: Config) -> tuple[bool, int | None]:
    """--meta and --max-memory (else `max-memory` in the config); --probe needs real weights, so it cannot go
    with --meta (--fix can: it fixes the model without its weights)."""
    from auditor.memory import parse_size

    if meta and options.probe:
        raise UsageError("--probe needs real weights; it cannot run with --meta")
    return meta, parse_size(max_memory) if max_memory is not None else config.max_memory


def _require_matplotlib() -> None:
    """--plot is checked before any model runs: a missing optional dependency should not cost a probe run."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib, which is not installed: pip install 'auditor[plot]' (or matplotlib)")


def _check_replaceable(out: Path, force: bool) -> None:
    """An existing --out is replaced only with --force, and only when an earlier --fix wrote it."""
    from auditor.errors import TargetError
    from auditor.fixing.writer import check_replaceable

    try:
        check_replaceable(out, force)
    except TargetError as exc:
        raise UsageError(str(exc)) from None


def _check_out(out: Path, targets: list[str]) -> None:
    """--fix never writes over what it audits: --out may not be, or contain, a target's file or folder."""
    resolved = out.resolve()
    for text in targets:
        path = _location(text)
        if not _exists(path):
            continue
        target = path.resolve()
        if target == resolved or resolved in target.parents:
            raise UsageError(f"--out {out}: would replace the audited {path}; write the fixed model elsewhere")


def _capture_methods(method: str) -> tuple[str, ...]:
    if method not in CAPTURE_METHODS:
        raise UsageError(f"--capture {method!r}: expected one of {', '.join(CAPTURE_METHODS)}")
    return (method,)


def _targets(targets: list[str] | None, config: Config) -> tuple[list[Any], Path | None]:
    """The targets to audit and the folder their paths are relative to: the command line's (relative to the
    working directory), else the configured ones (relative to the config file)."""
    from auditor.config import TargetConfig
    from auditor.specs import parse_spec

    if targets:
        return [TargetConfig(target=t) for t in targets], None
    if not config.targets:
        raise UsageError("no TARGET given and no `targets` configured in [tool.auditor]")
    for entry in config.targets:
        for spec in entry.inputs:
            parse_spec(spec)
    return config.targets, config.path.parent if config.path else None


def _selectors(values: list[str], flag: str, known: list[tuple[str, str]]) -> list[str]:
    patterns = [p.strip() for value in values for p in value.split(",") if p.strip()]
    for pattern in patterns:
        if not is_valid_selector(pattern, known):
            raise UsageError(f"{flag}: unknown rule selector {pattern!r} (see `audit rules`)")
    return patterns


def _checked(patterns: list[str], key: str, known: list[tuple[str, str]], config: Config) -> list[str]:
    for pattern in patterns:
        if not is_valid_selector(pattern, known):
            raise UsageError(f"{key} in {config.path}: unknown rule selector {pattern!r} (see `audit rules`)")
    return patterns


def _kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--kwargs: not valid JSON: {exc.msg}") from None
    except ValueError:  # int()'s digit limit
        raise UsageError(f"--kwargs: a number with more than {sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise UsageError(f"--kwargs: nested more than {MAX_NESTING} levels deep") from None
    if not isinstance(value, dict):
        raise UsageError("--kwargs: expected a JSON object such as '{\"depth\": 18}'")
    check_nesting(value, "--kwargs")
    return value


# --- audit rules / audit explain ------------------------------------------------------------------------------


@rules_app.command("rules")
def list_rules(
    output_format: Annotated[str, typer.Option("--format", help="text (a table), markdown (every rule's page) or json (every rule's page as data).")] = "text",
) -> None:
    """Table of every rule: code, name, severity, its fix (safe or unsafe with `--fix`, `--out` for a fixed copy
    only), what it flags."""
    from rich.table import Table

    from auditor import rule_pages
    from auditor.rule import all_rules

    rules = all_rules()
    if output_format == "json":
        _write(json.dumps([rule_pages.record(r) for r in rules], indent=2) + "\n")
        return
    if output_format == "markdown":
        _write(rule_pages.markdown(rules))
        return
    if output_format != "text":
        Terminal(stderr=True, soft_wrap=True).print(f"audit: error: --format {output_format!r}: expected text, markdown or json", style="red", markup=False)
        raise typer.Exit(2)
    table = Table(box=None, header_style="bold")
    for column in ("code", "name", "severity", "fix", "scope"):
        table.add_column(column, no_wrap=True)
    table.add_column("what it flags")
    for r in rules:
        table.add_row(r.code, r.name, str(r.severity), r.fix_availability, r.scope, r.summary)
    console = Terminal(highlight=False)
    if not console.is_terminal:
        console = Terminal(highlight=False, width=200)  # piped: one row per rule, no wrapping
    console.print(table)


@rules_app.command("explain")
def explain(code: Annotated[str, typer.Argument(help="A rule code (DRO001) or name (dropout-before-activation).")]) -> None:
    """The rule's full explanation: what, why, example, fix, references."""
    from rich.markdown import Markdown

    from auditor.rule import find_rule
    from auditor.rule_pages import page

    rule = find_rule(code)
    if rule is None:
        Terminal(stderr=True, soft_wrap=True, emoji=False).print(f"audit: error: unknown rule {code!r} (see `audit rules`)", style="red", markup=False, highlight=False)
        raise typer.Exit(2)
    console = Terminal(highlight=False)
    if console.is_terminal:
        console.print(Markdown(page(rule)))
    else:
        _write(page(rule))
