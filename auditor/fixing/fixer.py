"""`--fix` for one audited model: fix a copy, write it, load what was written and check it reproduces the fix.

The engine calls `fix_model`, then runs its own audit step on `FixOutcome.written` (the loaded folder, or the
fixed model itself when nothing is written) and hands the result to `FixOutcome.conclude`, which reports what
remains and finishes FIXES.md. This package never imports the engine: the graph rules reach the fix loop as the
`findings_of` function the engine passes in.

A model audited without its weights (on meta) is fixed and checked on meta: the written folder is loaded on meta
(its build's init calls recorded), must run a meta forward with the fixed model's output shapes and draw every
parameter as planned; the engine's re-audit then reads that record.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.fx as fx

from auditor.errors import TargetError, first_line
from auditor.findings import TargetResult
from auditor.fixing import remaining
from auditor.fixing.loop import Fixed, FindingsOf, FixSession
from auditor.fixing.save import contents_for, render_before, save_fixed
from auditor.fixing.verify import FixFailure, eval_outputs, outputs_match, runs
from auditor.fixing.writer import FolderContents, OutputFolder, write_fixes
from auditor.options import Options


@dataclass
class FixOutcome:
    fixed: Fixed
    written: Any  # LoadedModel for the engine's re-audit
    folder: Path | None = None  # the staged folder (None: fixed in memory only)
    contents: FolderContents | None = None
    output: OutputFolder | None = None

    def conclude(self, result: TargetResult, reaudit: TargetResult) -> None:
        """Report the fixes and what the re-audit left on `result`, and list it in FIXES.md."""
        diff = self.contents.diff if self.contents is not None else None
        left = remaining.conclude(result, self.fixed.fixes, self.fixed.notes, reaudit, diff)
        if self.folder is not None and self.contents is not None:
            self.contents.remaining = [remaining.describe(f, self.folder) for f in left]
            write_fixes(self.folder, self.contents)
        self.close()

    def abandon(self) -> None:
        """Drop the staged folder (the re-audit or the report failed)."""
        if self.output is not None and self.folder is not None:
            self.output.discard(self.folder)
        self.close()

    def close(self) -> None:
        if self.folder is not None:
            _forget_modules(self.folder)


def fix_model(loaded: Any, inputs: tuple[Any, ...], method: str, options: Options, output: OutputFolder | None,
              findings_of: FindingsOf) -> FixOutcome:
    """Fix a copy of `loaded.model` (captured with `method`, as the audit did) and, with `output`, write it to a
    staged folder and load it back. Raises FixFailure when no verified model comes out."""
    weights = loaded.weights
    session = FixSession(loaded.model, loaded.sites, inputs, method, options, findings_of, weights)
    session.start()
    gm = session.model
    before = render_before(gm, type(loaded.model).__name__, loaded.label, inputs) if isinstance(gm, fx.GraphModule) else None
    fixed = session.run()
    contents = contents_for(loaded.label, fixed, inputs, weights.reason() if weights.on_meta else None)
    if not loaded.owned:  # the caller still holds the model: the fixed one must not share its tensors
        fixed.workspace.detach_from_source()
    expected = runs(fixed.model, inputs, next((n for n in fixed.notes if ": not fixed: " in n), None))
    if output is None:
        return FixOutcome(fixed, _live(loaded, fixed, inputs))
    folder = output.stage(loaded.label)
    try:
        table = save_fixed(folder, fixed, loaded, inputs, contents, before)
        written = _load_back(folder, expected, inputs, (fixed, table) if table is not None else None)
    except BaseException:
        output.discard(folder)
        _forget_modules(folder)
        raise
    return FixOutcome(fixed, written, folder, contents, output)


def _live(loaded: Any, fixed: Fixed, inputs: tuple[Any, ...]) -> Any:
    """The fixed model as the engine re-audits it (without weights, with the planned inits as its record)."""
    from dataclasses import replace

    from auditor.loading.models import LoadedModel

    weights = replace(loaded.weights, inits=fixed.workspace.inits) if fixed.workspace.inits is not None else loaded.weights
    return LoadedModel(label=loaded.label, model=fixed.model, sites=dict(loaded.sites), namespace=None, owned=False,
                       example_inputs=tuple(inputs), weights=weights)


def _load_back(folder: Path, expected: list[Any], inputs: tuple[Any, ...], without_weights: tuple[Fixed, Any] | None = None) -> Any:
    """Load the written folder as `audit DIR` does and check it reproduces the model fixed in memory: its outputs,
    or for a model fixed without its weights (`without_weights`), loaded on meta, its output shapes and the init
    every parameter is drawn with."""
    from auditor.loading.meta import WeightPolicy
    from auditor.loading.models import ModelLoader
    from auditor.prepare import model_device
    from auditor.targets import Kind, Target

    try:
        loader = ModelLoader(weights=WeightPolicy(meta=without_weights is not None))
        loaded = loader.load(Target(Kind.FIXED, str(folder), path=folder))[0]
    except TargetError as exc:
        raise FixFailure(f"the written model does not load: {exc}") from exc
    device = expected[0].device if expected else model_device(loaded.model)
    written = loaded.model.to(device)
    try:
        got = eval_outputs(written, inputs)
    except Exception as exc:  # noqa: BLE001
        raise FixFailure(f"the written model does not run on the example inputs: {type(exc).__name__}: {first_line(exc)}") from exc
    equal, delta = outputs_match(expected, got)
    if not equal:
        raise FixFailure(f"the written model does not reproduce the fixed one (max |diff| {delta:.3g}); this is a bug in --fix")
    if without_weights is not None:
        _check_inits(*without_weights, loaded)
    loaded.example_inputs = tuple(inputs)
    loaded.owned = False
    return loaded


def _check_inits(fixed: Fixed, table: Any, written: Any) -> None:
    """Every parameter the written model draws has the init the fix loop planned (the statistics the init rules
    read), as recorded while the written folder was built on meta."""
    from auditor.fixing.initcode import same_init

    plan, record = fixed.workspace.inits, written.weights.inits
    assert plan is not None
    drawn = dict(written.model.named_parameters())
    for name, param in fixed.model.named_parameters():
        planned = plan.init_of(param)
        if planned is None or name in table.unwritten or name not in drawn or name in record.unknown:
            continue  # not known, so not drawn as the audited model was (FIXES.md lists it)
        if not same_init(planned, record.init_of(drawn[name]), moments_only=name in table.stand_ins):
            raise FixFailure(f"the written model does not draw `{name}` as planned ({planned.how}); this is a bug in --fix")


def _forget_modules(folder: Path) -> None:
    """Drop the modules imported from a staged folder (it is about to move), so later loads import afresh."""
    root = str(folder.resolve())
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and str(Path(path).resolve()).startswith(root):
            del sys.modules[name]


def failure_message(exc: BaseException, verbose: bool) -> tuple[str, str | None]:
    text = f"--fix failed: {exc}" if isinstance(exc, (FixFailure, TargetError)) else f"--fix failed: internal error: {type(exc).__name__}: {first_line(exc)}"
    return text, ("".join(traceback.format_exception(exc)) if verbose else None)
