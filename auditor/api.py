"""The Python API on live models: `auditor.audit(model, example_inputs)` and `auditor.fix(model, example_inputs)`.

The same engine as the CLI, on a model the caller built. The model is never moved or modified; its train/eval
state is restored after the capture. Failures raise `TargetError` instead of becoming error results.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch.nn as nn

from auditor.engine import Engine
from auditor.errors import TargetError
from auditor.findings import AppliedFix, Report
from auditor.memory import default_budget
from auditor.loading.inputs import bound_by_name
from auditor.loading.meta import weights_of
from auditor.loading.models import LoadedModel
from auditor.loading.sites import CreationSites
from auditor.loading.wrappers import unwrap
from auditor.options import FixOptions, Options
from auditor.config import validate_settings
from auditor.errors import UsageError
from auditor.rule import all_rules, default_settings
from auditor.selection import Selection, is_valid_selector


def audit(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    probe: bool = False,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    settings: dict[str, Any] | None = None,
    loss: Callable[[nn.Module, Any], Any] | None = None,
) -> Report:
    """Audit a live module. `example_inputs` is a tensor, a tuple (one item per positional forward argument),
    or a dict bound to the forward's parameters by name (`{"input_ids": ids, "attention_mask": mask}`; a
    `forward(self, batch)` that no key names takes the dict itself); without it, inputs are resolved as on the
    command line (`example_input_array`, then guessed from the forward and its layers).
    `loss(model, output)`: with `probe`, the real training loss of an output (`model` is the probes' copy),
    used instead of the probes' surrogate loss; if it fails, the surrogate is used and a note says why."""
    options = api_options(select, ignore, settings, probe=probe, probe_loss=loss)
    result = Engine(options).audit_loaded(live_model(model, example_inputs))
    if result.status != "ok":
        raise TargetError(result.error or "audit failed")
    return Report([result])


@dataclass
class FixResult:
    """What `auditor.fix` returns: the fixed module (a new object; the caller's model is untouched), the report
    of its re-audit with the fixes applied, and where it was written (with `out`). Unpacks as
    `model, report = auditor.fix(...)`."""

    model: nn.Module
    report: Report
    fixed_path: str | None = None

    @property
    def fixes(self) -> list[AppliedFix]:
        return [f for r in self.report.results for f in r.fixes]

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.report


def fix(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    out: str | Path | None = None,
    force: bool = False,
    shortcut: str = "conv",
    skip_concat: str = "pad",
    seed: int = 0,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> FixResult:
    """Fix what can be fixed in a copy of `model` (as `audit --fix`): returns the fixed module and the report
    (`report.results[0].fixes` lists each change and whether it keeps outputs; `findings` what remains).
    `out`: also write the fixed model as a self-contained folder (refused if it exists, unless `force`).
    `shortcut`: RES001's shortcut, "conv" (1x1 conv + BN) or "pad" (parameter-free). `skip_concat`: RES004's
    alignment of a skip concatenation, "pad" the smaller operand or center-"crop" the larger. Re-inits are seeded
    with `seed`. A model on the meta device is fixed without weights: the fixed module is on meta too, and `out`
    gets code that builds and initializes it (README, "Fixing without the weights"). Raises TargetError when the
    model cannot be captured or the fix fails."""
    if shortcut not in ("conv", "pad"):
        raise ValueError(f"shortcut={shortcut!r}: expected 'conv' or 'pad'")
    if skip_concat not in ("pad", "crop"):
        raise ValueError(f"skip_concat={skip_concat!r}: expected 'pad' or 'crop'")
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        _check_replaceable(out_path, force)
    options = api_options(select, ignore, settings, fix=FixOptions(out=out_path, force=force, shortcut=shortcut, skip_concat=skip_concat, seed=seed))
    engine = Engine(options)
    loaded = live_model(model, example_inputs)
    loaded.origin = _class_origin(model)
    with engine.committing_fixes():
        result = engine.audit_loaded(loaded)
    if result.status != "ok":
        raise TargetError(result.error or "fix failed")
    return FixResult(engine.last_fixed, Report([result]), result.fixed_path)


def _check_replaceable(out: Path, force: bool) -> None:
    """`out` may exist only as an earlier --fix output, and is replaced only with `force`."""
    from auditor.fixing.writer import check_replaceable

    try:
        check_replaceable(out, force)
    except TargetError as exc:
        raise FileExistsError(str(exc).replace("--force", "force=True")) from None


def _class_origin(model: nn.Module) -> dict[str, Any] | None:
    """How a fixed folder can build a live model's class again (models torch.fx cannot trace are written as
    weights plus this): only for a top-level class whose constructor needs no arguments."""
    import inspect

    cls = type(model)
    if cls.__module__.split(".")[0] == "torch":
        return None
    try:
        file = inspect.getsourcefile(cls)
        required = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                    if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError, OSError):
        return None
    if file is None or required or "." in cls.__qualname__:
        return None
    return {"file": str(Path(file).resolve()), "module": cls.__module__, "name": cls.__qualname__, "kwargs": {}}


def api_options(select: Iterable[str] | None, ignore: Iterable[str] | None, settings: dict[str, Any] | None, **extra: Any) -> Options:
    """Options checked as the command line checks them: an unknown selector or setting is a ValueError naming it."""
    known = [(rule.code, rule.name) for rule in all_rules()]
    selection = Selection(select=_selectors(select, "select", known) or ["ALL"], ignore=_selectors(ignore, "ignore", known))
    try:
        merged = validate_settings(dict(settings or {}), default_settings(), "passed to the API")
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    return Options(selection=selection, settings=merged, **extra)


def _selectors(patterns: Iterable[str] | None, name: str, known: list[tuple[str, str]]) -> list[str]:
    if isinstance(patterns, str):  # select="DRO001": one selector, not its letters
        patterns = [patterns]
    checked = list(patterns or [])
    for pattern in checked:
        if not isinstance(pattern, str) or not is_valid_selector(pattern, known):
            raise ValueError(f"{name}: unknown rule selector {pattern!r} (see `audit rules`)")
    return checked


def live_model(model: nn.Module, example_inputs: Any) -> LoadedModel:
    """Wrap a caller's module (the model inside a `torch.compile` or data-parallel wrapper); creation sites come
    from reading its classes' source. `example_inputs`: a tuple (one item per positional argument), a dict
    (bound to the forward's parameters by name) or one value."""
    model, note = unwrap(model)
    if isinstance(example_inputs, Mapping):
        example_inputs = bound_by_name(model, example_inputs)
    elif example_inputs is not None and not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    return LoadedModel(
        label=type(model).__name__,
        model=model,
        sites=CreationSites().for_model(model),
        namespace=sys.modules.get(type(model).__module__),
        owned=False,
        example_inputs=example_inputs,
        weights=weights_of(model, default_budget()),
        notes=[note] if note is not None else [],
    )
