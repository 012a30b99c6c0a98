"""The pipeline: targets -> loaded models -> captured graphs -> findings -> one Report.

Each target gets its own result: a target that fails (import, build, inputs, capture) is an "error" result and
the others still run. torch is imported only when a target actually holds a model.

A target's work has two parts: `audit_source` never runs the user's code (a file's static checks, and whether
its models must be imported); `audit_models` imports, builds, captures, probes and fixes. `Engine.run` does both
in this process (tests, the Python API); the command line runs `audit_models` in a child process per target
(`auditor.runner`). The engine does not know which.
"""

from __future__ import annotations

import ast
import contextlib
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from auditor.errors import TargetError, UsageError, first_line, missing_package
from auditor.findings import CaptureInfo, ClassRecord, Finding, TargetResult, settle_provisional
from auditor.locations import display_path
from auditor.options import Options
from auditor.rule import GraphContext, ProbeContext, run_rules
from auditor.source import check_source, parse
from auditor.static.outline import not_imported
from auditor.static.project import Project, read_source
from auditor.targets import Kind, Target

if TYPE_CHECKING:
    from auditor.config import TargetConfig
    from auditor.fixing.writer import OutputFolder
    from auditor.graph import AuditGraph
    from auditor.guard import Guard
    from auditor.loading.models import BuildFailure, LoadedModel, ModelLoader, Skipped
    from auditor.static.plan import FilePlan

Progress = Callable[[str], None]  # told what the engine starts: "importing", "building Net", "capturing Net"


class Engine:
    """Runs targets one after another; the model loader (and torch) is created on first need."""

    def __init__(self, options: Options, progress: Progress | None = None, output: OutputFolder | None = None,
                 guard: Guard | None = None) -> None:
        self.options = options
        self.progress = progress or (lambda _: None)
        self.guard = guard  # what the user's code was refused in this process (auditor.guard), if it is guarded
        self._loader: ModelLoader | None = None
        self._output = output  # --fix --out: the staged folders, moved into place by committing_fixes (default: made on first need)
        self._staged: list[tuple[TargetResult, Path]] = []
        self.last_fixed: Any = None  # the last fixed model (auditor.fix returns it)
        self.project = Project()  # what the files' sources say about importing them, read once per run
        self._planners: dict[Path, Any] = {}  # repository root -> its Planner (auditor.static.plan)
        self.planning_errors: list[str] = []  # tracebacks of failed repository readings (see _planning)

    @property
    def loader(self) -> ModelLoader:
        if self._loader is None:
            from auditor.loading.meta import WeightPolicy
            from auditor.loading.models import ModelLoader

            policy = WeightPolicy(meta=self.options.meta, max_memory=self.options.max_memory)
            self._loader = ModelLoader(trust_pickle=self.options.trust_pickle, weights=policy, progress=self.progress)
        return self._loader

    def run(self, targets: Iterable[Target]) -> list[TargetResult]:
        """Every target in this process, one after another."""
        targets = list(targets)
        results: list[TargetResult] = []
        with self.committing_fixes():
            self.prepare(targets)
            for target in targets:
                results.extend(self.audit_target(target))
        return settle_provisional(results)

    def prepare(self, targets: list[Target]) -> None:
        """Read the repositories of the file targets once, all their files together, before any is planned
        (`auditor.static.plan`). Reading never fails a run: a file it cannot plan is found as its import shows."""
        from auditor.static.repository import find_root

        by_root: dict[Path, list[Path]] = {}
        for target in targets:
            if target.kind in (Kind.FILE, Kind.FILE_MEMBER) and target.path is not None:
                by_root.setdefault(find_root(target.path), []).append(target.path)
        for root, paths in by_root.items():
            planner = self._planner(root)
            if planner is not None:
                with self._planning():
                    planner.prepare(paths)
        for target in targets:  # the plan is part of what a cached result is keyed on (auditor.cache.key)
            if target.kind in (Kind.FILE, Kind.FILE_MEMBER) and target.path is not None:
                target.plan = self.plan_of(target.path)
        self._check_kwargs([t for t in targets if t.kind is Kind.FILE and t.path is not None and (t.kwargs or self.options.kwargs)])

    def _check_kwargs(self, files: list[Target]) -> None:
        """--kwargs on whole files applies to the models whose signature takes the keys; a key no model of the
        audited files takes is a usage error, not silently ignored."""
        accepted: set[str] = set()
        for target in files:
            plan = self.plan_of(target.path) if target.path is not None else None
            if plan is None or any(entry.open_ended for entry in plan.models()):
                return  # a model that takes any keyword (or a file the reading could not plan)
            accepted.update(p.name for entry in plan.models() for p in entry.parameters)
        keys = {k for t in files for k in (t.kwargs or self.options.kwargs)}
        unknown = sorted(keys - accepted)
        if files and unknown:
            takes = f" (their parameters: {', '.join(sorted(accepted))})" if accepted else ""
            raise UsageError(f"--kwargs: no model in {_files_text(files)} takes {', '.join(map(repr, unknown))}{takes}")

    def plan_of(self, path: Path) -> FilePlan | None:
        """What the repository says about building and feeding the models of one file."""
        from auditor.static.repository import find_root

        planner = self._planner(find_root(path))
        with self._planning():
            return planner.file_plan(path) if planner is not None else None
        return None

    @contextlib.contextmanager
    def _planning(self) -> Iterator[None]:
        """Reading the repository only adds to what the import shows: a failure of it (a bug of the tool's on
        unusual code) leaves that file without a plan, never fails the run; it is kept in `planning_errors`."""
        try:
            yield
        except Exception:  # noqa: BLE001
            self.planning_errors.append(traceback.format_exc())

    def _planner(self, root: Path) -> Any:
        if root not in self._planners:
            from auditor.static.plan import shared_planner

            with self._planning():
                self._planners[root] = shared_planner(root, self.project)
            self._planners.setdefault(root, None)
        return self._planners[root]

    def audit_target(self, target: Target) -> list[TargetResult]:
        results, needs_models = self.audit_source(target)
        return results + list(self.audit_models(target)) if needs_models else results

    def audit_source(self, target: Target) -> tuple[list[TargetResult], bool]:
        """What needs none of the user's code to run: a file's source checks. Also says whether `audit_models`
        has work for this target (a file without models has none)."""
        if target.kind is Kind.FILE and target.path is not None and target.path.suffix.lower() == ".ipynb":
            return self._audit_notebook(target)
        if target.kind is Kind.FILE:
            return self._audit_file(target)
        if target.kind is Kind.FILE_MEMBER and target.path is not None:
            target.plan = self.plan_of(target.path)
        return [], True

    def source_files(self, target: Target) -> list[Path]:
        """The files `audit_source` read for `target`: a file and the local modules its import would run."""
        if target.kind is Kind.FILE and target.path is not None:
            return self.project.closure(target.path)
        return []

    def audit_models(self, target: Target) -> Iterator[TargetResult]:
        """Import, build and audit the target's models, one result at a time (each as soon as it is done)."""
        from auditor.loading.models import BuildFailure, Skipped, blocks_left

        if target.kind is Kind.PROGRAM:
            yield self._guarded(target.text, lambda: self._audit_program(target))
            return
        label = target_label(target)
        loaded: list[LoadedModel | Skipped | BuildFailure] = []
        failure = self._guarded(label, lambda: loaded.extend(self.loader.load(_with_options(target, self.options))))
        if self.guard is not None and self.guard.refusals:  # refused while imported or built: nothing of it is audited
            yield from self._not_audited(target, [])
            return
        if failure is not None:
            yield failure
            return
        for index, item in enumerate(loaded):
            if isinstance(item, Skipped):
                result = TargetResult(target=item.label, status="skipped", reason=item.reason)
            elif isinstance(item, BuildFailure):
                result = _error(item.label, str(item.error), item.error, self.options)
            else:
                result = self._guarded(item.label, lambda model=item: self.audit_loaded(model))
            if self.guard is not None and self.guard.refusals:  # refused while it ran: neither it nor the rest
                yield from self._not_audited(target, loaded[index:])
                return
            result.model_class = item.model_class
            yield result
            if not isinstance(item, (Skipped, BuildFailure)) and result.status != "ok":  # what it holds is covered by nothing now
                for block in blocks_left(item):
                    yield TargetResult(target=block.label, status="skipped", reason=block.reason, model_class=block.model_class)

    def _not_audited(self, target: Target, rest: list[LoadedModel | Skipped | BuildFailure]) -> Iterator[TargetResult]:
        """The skipped results of a target whose code the guard refused something: the models of `rest`, or
        (refused while discovering them) every model its source declares."""
        assert self.guard is not None
        refused = f"its code {self.guard.refusals[0]}"
        label = target_label(target)
        if rest:
            for item in rest:
                yield TargetResult(target=item.label, status="skipped", model_class=item.model_class,
                                   reason=f"not audited: {refused}; `audit {item.label}` audits it on purpose")
            return
        tree = self.project.facts(target.path).tree if target.kind is Kind.FILE and target.path is not None else None
        if tree is None:
            yield TargetResult(target=label, status="skipped",
                               reason=f"not audited: {refused}; `audit FILE.py:NAME` audits a model of it on purpose")
            return
        assert target.path is not None
        yield from self._unimported(label, refused, tree, target.plan or self.plan_of(target.path), prefix="not audited")

    # --- source files -----------------------------------------------------------------------------------------
    def _audit_file(self, target: Target) -> tuple[list[TargetResult], bool]:
        assert target.path is not None
        label = display_path(str(target.path))
        started = time.perf_counter()
        try:
            text = read_source(target.path)
            tree = parse(label, text)
        except SyntaxError as exc:
            if exc.lineno is None:  # a PEP 263 coding line naming an unknown encoding
                return [_error(label, f"{label}: cannot be read: {exc.msg}", exc, self.options)], False
            return [_error(label, f"{label}:{exc.lineno}: syntax error: {exc.msg}", exc, self.options)], False
        except OSError as exc:
            return [_error(label, f"{label}: cannot be read: {exc.strerror or first_line(exc)}", exc, self.options)], False
        except UnicodeDecodeError as exc:
            return [_error(label, f"{label}: cannot be read: {first_line(exc)}", exc, self.options)], False
        source = self._source_checks(label, text, tree, started)
        if self.options.fix is not None and self.options.fix.source and source.findings:  # a notebook: --fix --out only
            from auditor.sourcefix.planning import plan_script

            source.planned = plan_script(source.findings, self.options, str(target.path))
        return self._models_of(target, label, source, tree, tree)

    def _source_checks(self, label: str, text: str, tree: ast.Module, started: float, cells: Any = None) -> TargetResult:
        """A file's source rules as its own result; in a notebook (`cells`: its code), located in cells."""
        source = TargetResult(target=label)
        failures: list[str] = []
        findings = _kept(check_source(label, text, tree, self.options, failures), self.options)
        if cells is not None:
            findings = [replace(f, file=f"{label}:cell {cells.cell_of(f.line)[0]}", line=cells.cell_of(f.line)[1])
                        if f.file == label and f.line else f for f in findings]
        source.findings = findings
        if failures:  # a source rule crashed: a bug, shown rather than passed
            source.status, source.error = "error", "; ".join(failures)
        source.seconds = time.perf_counter() - started
        return source

    def _models_of(self, target: Target, label: str, source: TargetResult, tree: ast.Module, declared: ast.Module) -> tuple[list[TargetResult], bool]:
        """Whether the file's models are imported (`declared`: the code its import runs), with its plan; a
        script's models are listed, each with the command that audits it on purpose."""
        assert target.path is not None
        self.project.facts(target.path, declared)
        if not self.project.reaches_torch(target.path):
            return [source], False  # a plain utility module: never executed
        plan = self.plan_of(target.path)
        blocker = self.project.import_blocker(target.path)
        if blocker is not None:  # a script: read, not run
            return [source, *self._unimported(label, blocker, tree, plan)], False
        target.plan = plan
        return [source], True

    @staticmethod
    def _unimported(label: str, blocker: str, tree: ast.Module, plan: FilePlan | None, prefix: str = "not imported") -> list[TargetResult]:
        """Each model of a file whose code does not run (`blocker` says why), skipped with the command that
        audits it on purpose: its candidates and model classes, and those defined where no import reaches."""
        classes = {name: entry.line for name, entry in plan.classes.items() if entry.model} if plan is not None else {}
        skipped = [TargetResult(target=name, status="skipped", reason=reason,
                                model_class=ClassRecord(name.rsplit(":", 1)[-1], *plan.where(line)) if line and plan is not None else None)
                   for name, reason, line in not_imported(label, blocker, tree, classes, prefix)]
        if plan is not None:
            named = {r.target for r in skipped}
            skipped += [TargetResult(target=f"{label}:{name}", status="skipped", model_class=ClassRecord(name, *plan.where(line)),
                                     reason=f"{prefix}: {blocker}; and defined {scope}, which no audit runs")
                        for name, (line, scope) in plan.nested.items() if f"{label}:{name}" not in named]
        return skipped

    def _audit_notebook(self, target: Target) -> tuple[list[TargetResult], bool]:
        """A notebook: source checks over all its code cells; its declaring cells' models, as a file's."""
        from auditor.static.notebooks import NotebookUnreadable, read_notebook

        assert target.path is not None
        label = display_path(str(target.path))
        started = time.perf_counter()
        try:
            code = read_notebook(target.path)
            tree, declared = code.tree, ast.parse(code.declaring_source(), filename=str(target.path))
        except NotebookUnreadable as exc:
            if "needs nbformat" in str(exc):
                return [TargetResult(target=label, status="skipped", reason=f"not read: {exc}")], False
            return [_error(label, f"{label}: {exc}", exc, self.options)], False
        return self._models_of(target, label, self._source_checks(label, code.source, tree, started, code), tree, declared)

    # --- models -----------------------------------------------------------------------------------------------
    def audit_loaded(self, loaded: LoadedModel) -> TargetResult:
        """Capture one built model and run the graph rules on it, in float32 semantics whatever autocast the
        caller has active (a training callback under mixed precision)."""
        from auditor.capture.float32 import autocast_off

        with autocast_off():
            return self._audit_loaded(loaded)

    def _audit_loaded(self, loaded: LoadedModel) -> TargetResult:
        from auditor.prepare import capture_model, place_of, place_on_device, settle_guessed

        started = time.perf_counter()
        name = loaded.label.rsplit(":", 1)[-1]
        self.progress(f"capturing {name}")
        place_on_device(loaded, self.options.device)
        prepared = capture_model(loaded, self.options.inputs or loaded.inputs, self.options.capture, loaded.example_inputs)
        graph, inputs = prepared.graph, prepared.inputs
        result = TargetResult(target=loaded.label, capture=CaptureInfo(graph.method, len(graph), list(graph.notes), graph.stopped, prepared.records,
                                                                       list(loaded.classes)),
                              built=loaded.built, model_class=loaded.model_class)
        result.capture.notes.extend(loaded.notes + loaded.weights.notes())
        failures: list[str] = []
        found = run_graph_rules(graph, self.options, failures, loaded.weights.inits, result.capture.notes)
        findings, guess_notes = settle_guessed(loaded, prepared, found, lambda other: run_graph_rules(other, self.options, [], loaded.weights.inits))
        result.capture.notes.extend(guess_notes)
        guessed_only = {place_of(f) for f in found if f not in findings}  # what --fix must leave alone too
        refusal = self._refusal(loaded)
        if self.options.probe and refusal is None:
            self.progress(f"probing {name}")
            findings += run_probes(loaded.model, inputs, graph, self.options, result, failures)
        findings = _in_cells(findings, loaded.file_plan)
        result.findings = _kept(findings, self.options)
        if failures:  # a rule crashed: this model was not fully audited, so it did not pass (nor is it fixed)
            result.status, result.error = "error", "; ".join(failures)
        elif refusal is not None:  # the structure was audited; what was asked beyond it was not
            result.status, result.error = "error", refusal
        elif self.options.fix is not None and self.options.fix.source:
            from auditor.sourcefix.planning import plan_model

            result.planned = plan_model(graph, result.findings, self.options, loaded.label, record=loaded.weights.written_by,
                                        init_locals=self.loader.sites.init_locals(loaded.model))
        elif self.options.fix is not None:
            self.progress(f"fixing {name}")
            self._fix(loaded, graph, inputs, result, guessed_only)
        result.seconds = time.perf_counter() - started
        return result

    def _refusal(self, loaded: LoadedModel) -> str | None:
        """Why --probe or --fix, which need the real weights and a copy of them, cannot run on this model. A
        model audited without its weights is fixed without them (auditor/fixing/initplan.py)."""
        fix = self.options.fix is not None and not self.options.fix.source and not loaded.weights.on_meta
        asked = [flag for flag, wanted in (("--probe", self.options.probe), ("--fix", fix)) if wanted]
        return loaded.weights.refusal(" and ".join(asked)) if asked else None

    # --- --fix ------------------------------------------------------------------------------------------------
    def _fix(self, loaded: LoadedModel, graph: AuditGraph, inputs: tuple[Any, ...], result: TargetResult,
             guessed_only: set[tuple[Any, ...]]) -> None:
        """Fix a copy of the model and stage its folder (auditor/fixing), then audit what was written with this
        engine's own audit step and report what remains. A failure makes this result an error but keeps its
        findings. Findings only the guessed input made (`guessed_only`, by place) are not fixed."""
        from dataclasses import replace

        from auditor.fixing.fixer import failure_message, fix_model
        from auditor.prepare import place_of

        try:
            outcome = fix_model(loaded, inputs, graph.method, self.options, self._output_folder(),
                                lambda fixing, inits: [f for f in _kept(run_graph_rules(fixing, self.options, [], inits), self.options)
                                                       if place_of(f) not in guessed_only])
            try:
                reaudit = Engine(replace(self.options, fix=None, capture=(outcome.fixed.method,))).audit_loaded(outcome.written)
                if reaudit.status != "ok":
                    raise TargetError(f"the fixed model cannot be re-audited: {reaudit.error}")
                outcome.conclude(result, reaudit)
            except BaseException:
                outcome.abandon()
                raise
        except Exception as exc:  # noqa: BLE001 - any failure of --fix is this target's error, not the run's
            result.status = "error"
            result.error, result.traceback = failure_message(exc, self.options.verbose)
            return
        self.last_fixed = outcome.fixed.model
        if outcome.folder is not None:
            self._staged.append((result, outcome.folder))

    def _output_folder(self) -> OutputFolder | None:
        if self._output is None and self.options.fix is not None and self.options.fix.out is not None:
            from auditor.fixing.writer import OutputFolder

            self._output = OutputFolder(self.options.fix.out, force=self.options.fix.force)
        return self._output

    @contextlib.contextmanager
    def committing_fixes(self) -> Iterator[None]:
        """Around a run: the fixed models it staged for --out move into place when it ends, and are removed
        when it fails or is interrupted."""
        try:
            yield
        except BaseException:
            self._discard_fixes()
            raise
        self._commit_fixes()

    def _commit_fixes(self) -> None:
        """Move the staged fixed models to --out in one step and record where each went."""
        if self._output is None:
            return
        staged, self._staged = self._staged, []
        try:
            final = self._output.commit()
        except Exception as exc:  # noqa: BLE001 - the output folder could not be written
            for result, _ in staged:
                result.status, result.error = "error", f"--fix: writing {self._output.out} failed: {first_line(exc)}"
            return
        for result, folder in staged:
            if folder in final:
                result.fixed_path = display_path(str(final[folder]))
                _relocate(result, display_path(str(folder)), result.fixed_path)

    def adopt_fix(self, result: TargetResult, folder: Path) -> None:
        """A fixed model another engine (in a child process) staged in this engine's output folder: committed
        with this engine's own."""
        self._staged.append((result, folder))

    def _discard_fixes(self) -> None:
        if self._output is not None:
            self._output.cleanup()
        self._staged = []

    def _audit_program(self, target: Target) -> TargetResult:
        from auditor.capture.export import load_program

        assert target.path is not None
        self.progress("loading")
        try:
            graph = load_program(str(target.path), trust_pickle=self.options.trust_pickle)
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken or foreign file
            raise TargetError(f"{target.text}: not a loadable torch.export program: {first_line(exc)}") from exc
        result = TargetResult(target=target.text, capture=CaptureInfo(graph.method, len(graph), list(graph.notes)))
        failures: list[str] = []
        result.findings = _kept(run_graph_rules(graph, self.options, failures, notes=result.capture.notes), self.options)
        if failures:
            result.status, result.error = "error", "; ".join(failures)
        if self.options.fix is not None:
            result.capture.notes.append("fix: a saved torch.export program has no model code to fix; run --fix on the code that builds it")
        if self.options.probe:
            result.capture.notes.append("probes skipped: a saved program has no runnable model")
        return result

    def _guarded(self, label: str, work: Callable[[], Any]) -> Any:
        """Run one target's work; any failure becomes that target's error result (a None result stays None), and
        one that needs a package the file was imported without is not audited, saying which."""
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - every failure of one target is that target's result
            missing = missing_package(exc)
            if missing is not None:
                return TargetResult(target=label, status="skipped", reason=f"not audited: auditing it {missing}")
            return _error(label, _failure_message(exc), exc, self.options)


def _failure_message(exc: Exception) -> str:
    from auditor.capture import CaptureError
    from auditor.capture.forward import ForwardFailure

    if isinstance(exc, TargetError):
        return str(exc)
    if isinstance(exc, ForwardFailure):
        return f"forward failed: {exc}"
    if isinstance(exc, CaptureError):
        return f"could not capture the model: {exc}"
    return f"internal error: {type(exc).__name__}: {first_line(exc)} (--verbose shows the traceback)"  # a bug of the tool's


def _files_text(files: list[Target]) -> str:
    names = [display_path(str(t.path)) for t in files]
    return names[0] if len(names) == 1 else f"the {len(names)} audited files"


def target_label(target: Target) -> str:
    """How results name a target: paths as `display_path` shows them, with `:NAME` for a member."""
    if target.kind is Kind.FILE_MEMBER:
        return f"{display_path(str(target.path))}:{target.name}"
    return display_path(str(target.path)) if target.kind is Kind.FILE else target.text


def run_graph_rules(graph: AuditGraph, options: Options, failures: list[str], inits: Any = None,
                    notes: list[str] | None = None) -> list[Finding]:
    """Every enabled graph rule over one graph (`inits`: the init record of a model built without weights, `notes`:
    where the rules' notes go); a finding is `fixable` only where --fix would apply its fix."""
    from auditor.fixing.plan import judge

    ctx = GraphContext(graph=graph, settings=options.settings, inits=inits, notes=[] if notes is None else notes)
    findings = run_rules("graph", ctx, options.selection, failures, options.verbose)
    return _chained(graph, _at_calls(graph, judge(graph, findings, options.fix)))


def _at_calls(graph: AuditGraph, findings: list[Finding]) -> list[Finding]:
    """A finding about one call of a module the forward calls more than once (one Dropout before a ReLU and before
    a Mish) names that call's forward line: its file and line stay where the module is created."""
    from dataclasses import replace

    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.kind == "module" and n.module is not None:
            calls[n.module] = calls.get(n.module, 0) + 1
    nodes = {n.name: n for n in graph.nodes}
    located = []
    for finding in findings:
        node = nodes.get(finding.node or "")
        site = node.meta.get("call_site") if node is not None and calls.get(node.module or "", 0) > 1 else None
        if site is not None:
            where = f"{site[0]}:{site[1]}"
            finding = replace(finding, message=f"{finding.message} (the call at {where}; `{node.module}` is called "
                                               f"{calls[node.module or '']} times)", call=where)
        located.append(finding)
    return located


def _chained(graph: AuditGraph, findings: list[Finding]) -> list[Finding]:
    """Findings of one rule along one chain of layers (INI001 on every Linear of an MLP) get a shared `group`,
    which people's formats show as one finding naming the layers."""
    from dataclasses import replace

    nodes = {n.name: n for n in graph.nodes}
    by_code: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.node in nodes:
            by_code.setdefault(finding.code, []).append(finding)
    group_of: dict[tuple[str, str], str] = {}
    for code, located in by_code.items():
        for index, chain in enumerate(graph.chains({id(n): n for n in (nodes[f.node] for f in located)}.values())):
            if len(chain) > 1:
                group_of.update({(code, n.name): f"{code}:{index}" for n in chain})
    return [replace(f, group=group_of[(f.code, f.node)]) if (f.code, f.node) in group_of else f for f in findings]


def run_probes(model: Any, inputs: tuple[Any, ...], graph: AuditGraph, options: Options, result: TargetResult, failures: list[str]) -> list[Finding]:
    """Measure the model (`auditor.probes`, on a copy), keep the numbers in `result.probes`, and run the probe
    rules on them. The probes' own notes join the capture notes."""
    from auditor.probes import run_probes as measure

    measurements = measure(model, inputs, graph, options.settings, loss=options.probe_loss)
    result.probes = measurements.to_json()
    notes = result.capture.notes if result.capture is not None else []
    notes.extend(measurements.notes)
    ctx = ProbeContext(graph=graph, measurements=measurements, settings=options.settings)
    return run_rules("probe", ctx, options.selection, failures, options.verbose)


def _relocate(result: TargetResult, old: str, new: str) -> None:
    """Findings located in a staged fixed model (introduced by a fix) point into its final folder."""
    from dataclasses import replace

    prefix = old.rstrip("/") + "/"
    result.findings = [
        replace(f, file=new.rstrip("/") + "/" + f.file[len(prefix):]) if f.file and f.file.startswith(prefix) else f
        for f in result.findings
    ]


def _in_cells(findings: list[Finding], plan: FilePlan | None) -> list[Finding]:
    """Findings in a notebook's code, located in its cells (`nb.ipynb:cell 3`, line 12)."""
    if plan is None or not plan.notebook_starts:
        return findings
    located = []
    for finding in findings:
        if finding.file == plan.label and finding.line:
            file, line = plan.where(finding.line)
            finding = replace(finding, file=file, line=line)
        located.append(finding)
    return located


def _kept(findings: list[Finding], options: Options) -> list[Finding]:
    unique = {(f.code, f.node, f.module, f.file, f.line, f.message): f for f in findings}
    kept = [f for f in unique.values() if options.selection.keeps(f)]
    return sorted(kept, key=lambda f: (f.file or "", f.line or 0, f.code, _module_order(f.module)))


def _module_order(module: str | None) -> tuple[tuple[int, int | str], ...]:
    """`layers.2` before `layers.10`."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in (module or "").split("."))


def _with_options(target: Target, options: Options) -> Target:
    """The command line's --kwargs apply to targets that did not bring their own (config targets do)."""
    if options.kwargs and not target.kwargs:
        target.kwargs = dict(options.kwargs)
    return target


def _error(label: str, message: str, exc: BaseException, options: Options) -> TargetResult:
    """An error result; with --verbose it keeps the traceback, which the CLI prints to stderr."""
    result = TargetResult(target=label, status="error", error=message)
    if options.verbose:
        result.traceback = "".join(traceback.format_exception(exc))
    return result


def resolve_targets(entries: list[TargetConfig], exclude: list[str], base: Path | None = None) -> tuple[list[Target], list[TargetResult]]:
    """Parse TARGET strings (paths relative to `base`, the config file's folder for configured targets) with
    the arguments and inputs configured for them; unparseable ones become error results (the others still run)."""
    from auditor.targets import parse_target

    targets: list[Target] = []
    errors: list[TargetResult] = []
    for entry in entries:
        try:
            parsed = parse_target(entry.target, exclude=exclude, base=base)
        except TargetError as exc:
            errors.append(TargetResult(target=entry.target, status="error", error=str(exc)))
            continue
        except OSError as exc:  # a path this user may not look into (a mode-000 folder)
            errors.append(TargetResult(target=entry.target, status="error", error=f"{entry.target}: cannot be read: {exc.strerror or exc}"))
            continue
        for target in parsed:
            target.kwargs, target.inputs = dict(entry.kwargs), list(entry.inputs)
        targets.extend(parsed)
    return targets, errors
