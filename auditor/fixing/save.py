"""Writing one fixed model into its (staged) folder: generated code for fx captures, the user's code plus the
fixed weights otherwise, then FIXES.md and, last, the manifest that marks the folder as --fix's.

A model fixed without its weights (audited on the meta device) is written without weights.pt: its code draws
every parameter as the plan says (`INITS`, from `initcode.py`), buffers.pt holds the buffers' values its build
computed, and the manifest and FIXES.md say that no weights were carried.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from auditor.fixing.initcode import InitTable
from auditor.fixing.initplan import InitPlan
from auditor.fixing.codegen import ModelSource, class_name_for, render_model, render_weights_loader, unsaved_buffers
from auditor.fixing.loop import Fixed
from auditor.fixing.rewrite import CannotFix
from auditor.fixing.verify import FixFailure
from auditor.fixing.writer import FolderContents, keeps_inputs, save_inputs, save_tensors, write_fixes, write_manifest


def contents_for(target: str, fixed: Fixed, inputs: tuple[Any, ...], without_weights: str | None = None) -> FolderContents:
    return FolderContents(target=target, kind="code" if fixed.method == "fx" else "weights",
                          fixes=list(fixed.fixes), notes=list(fixed.notes), input_specs=input_specs(inputs),
                          without_weights=without_weights)


def render_source(gm: fx.GraphModule, class_name: str, target: str, specs: list[str], summary: list[str],
                  has_inputs: bool, table: InitTable | None = None, buffers: list[str] | None = None) -> tuple[str, list[str]]:
    """model.py's text for a GraphModule (and notes), raising FixFailure when it cannot be written. With `table`
    (a model fixed without its weights) its load_model() draws the parameters as the table says."""
    source = ModelSource(class_name=class_name_for(class_name), origin=target, summary=summary,
                         has_inputs_file=has_inputs, input_specs=specs,
                         inits=table.render() if table is not None else None, buffers=list(buffers or []))
    try:
        return render_model(gm, source)
    except CannotFix as exc:
        raise FixFailure(f"cannot write the fixed model: {exc}") from exc


def save_fixed(folder: Path, fixed: Fixed, loaded: Any, inputs: tuple[Any, ...], contents: FolderContents,
               before: str | None) -> InitTable | None:
    """Write the fixed model into `folder`; `before` is the generated code of the unfixed copy (for the diff).
    Returns the init table of a model fixed without its weights (None with weights)."""
    has_inputs = save_inputs(folder, inputs)
    summary = [f"{f.code} [{f.module or '<root>'}] {f.action}" for f in fixed.fixes]
    plan = fixed.workspace.inits
    table = init_table(fixed.model, plan, planned_only=fixed.method != "fx") if plan is not None else None
    if fixed.method == "fx":
        gm = fixed.model
        assert isinstance(gm, fx.GraphModule)
        buffers = _buffer_values(gm, plan) if plan is not None else {}
        text, notes = render_source(gm, type(loaded.model).__name__, contents.target, contents.input_specs, summary, has_inputs,
                                    table, sorted(buffers))
        if before is not None:
            contents.diff = "".join(difflib.unified_diff(
                before.splitlines(keepends=True), text.splitlines(keepends=True), "before/model.py", "after/model.py"))
        contents.notes.extend(notes)
        fixed.notes.extend(notes)
        (folder / "model.py").write_text(text, encoding="utf-8")
        if plan is not None:
            if buffers:
                save_tensors(folder / "buffers.pt", buffers)
        else:
            save_tensors(folder / "weights.pt", dict(gm.state_dict()))
            if unsaved_buffers(gm):
                save_tensors(folder / "buffers.pt", unsaved_buffers(gm))
    else:
        _save_weights_loader(folder, fixed, loaded, contents, summary, has_inputs, table)
    if table is not None:
        notes = weightless_notes(contents.without_weights or "", table, fixed, plan)
        contents.notes[:0] = notes
        fixed.notes[:0] = notes
    write_fixes(folder, contents)
    write_manifest(folder, contents, {} if has_inputs else {"inputs": contents.input_specs})
    return table


def render_before(gm: fx.GraphModule, class_name: str, target: str, inputs: tuple[Any, ...]) -> str | None:
    """The generated code of the copy before any fix (None when it cannot be generated: the real write says why)."""
    try:
        return render_source(gm, class_name, target, input_specs(inputs), [], keeps_inputs(inputs))[0]
    except FixFailure:
        return None


def _save_weights_loader(folder: Path, fixed: Fixed, loaded: Any, contents: FolderContents, summary: list[str],
                         has_inputs: bool, table: InitTable | None) -> None:
    """For models torch.fx cannot trace: `model.py` rebuilds the model from the user's source (or config.json,
    copied here) and loads the fixed weights, or without weights re-initializes what the fixes planned
    (`table`); parameters a fix removed (a folded bias) are removed again after building."""
    origin = getattr(loaded, "origin", None)
    if not origin:
        raise FixFailure("this model was not built from a file or module the fixed folder could import again; "
                         "it cannot be written (use auditor.fix() to get the fixed module in Python)")
    original = set(loaded.model.state_dict())
    current = dict(fixed.model.state_dict())
    added = sorted(set(current) - original)
    if added:
        raise FixFailure(f"cannot write new parameters ({', '.join(added)}) without a torch.fx graph")
    dropped = sorted(original - set(current))
    text = render_weights_loader(origin, dropped, contents.target, summary, has_inputs, contents.input_specs,
                                 table.render() if table is not None else None)
    (folder / "model.py").write_text(text, encoding="utf-8")
    if "config" in origin:
        shutil.copyfile(origin["config"], folder / "config.json")
    if table is None:
        save_tensors(folder / "weights.pt", current)


def init_table(model: torch.nn.Module, plan: InitPlan, planned_only: bool) -> InitTable:
    """Every parameter's init as the written code draws it (`planned_only`: only those a fix re-initialized,
    when the user's own code builds and initializes the model)."""
    table = InitTable()
    unknown = plan.unknown
    for name, param in model.named_parameters():
        why = plan.planned(param)
        if why is None and planned_only:
            continue
        table.add(name, plan.init_of(param), why, unknown.get(name))
    return table


def _buffer_values(gm: fx.GraphModule, plan: InitPlan) -> dict[str, torch.Tensor]:
    """The buffers whose values the build computed (they go into buffers.pt), by qualified name."""
    found = {}
    for name, buffer in gm.named_buffers():
        values = plan.buffer_values(buffer)
        if values is not None:
            found[name] = values
    return found


def weightless_notes(why: str, table: InitTable, fixed: Fixed, plan: Any) -> list[str]:
    """What FIXES.md and the result say about a model fixed without its weights: that none were carried, how
    the written code initializes it, and which parameters it cannot initialize as the audited model was."""
    drawn = {t if isinstance(t, str) else t[0] for group in table.groups.values() for t in group}
    planned = {n for n, p in fixed.model.named_parameters() if plan.planned(p) is not None}
    if fixed.method != "fx":
        how = (f"load_model() builds it with your code's own init and re-initializes the {len(planned)} "
               f"parameter{'s' if len(planned) != 1 else ''} the fixes changed (INITS in model.py)")
    elif drawn:
        how = (f"load_model() draws {len(drawn)} parameters as INITS in model.py says ({len(drawn - planned)} with the "
               f"init calls recorded while your model was built, {len(planned)} as the fixes re-initialized them)")
    else:
        how = "no init call was recorded for it (a model handed over on meta): load_model() gives every parameter its module's default init"
    notes = [f"weights were not carried ({why}): {how}; load your trained weights with load_state_dict to use it"]
    if table.stand_ins:
        notes.append(f"{_names(table.stand_ins)}: drawn from a normal with the mean and std of the values they were "
                     "created with (the values themselves are not known without weights)")
    for reason, group in _by_reason(table.unwritten).items() if drawn else ():
        notes.append(f"{_names(group)}: not in INITS ({reason}): left with the init their module's constructor gives "
                     "(a parameter of your own module is created with torch.empty: initialize it before use)")
    return notes


def _by_reason(unwritten: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, reason in unwritten.items():
        grouped.setdefault(reason, []).append(name)
    return grouped


def _names(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def input_specs(inputs: tuple[Any, ...]) -> list[str]:
    """`--input`-style specs of the example inputs (`2,3,16,16`, `int64:2,128`)."""
    specs = []
    for value in inputs:
        if isinstance(value, torch.Tensor):
            dims = ",".join(str(d) for d in value.shape) or "1"
            dtype = str(value.dtype).replace("torch.", "")
            specs.append(dims if dtype == "float32" else f"{dtype}:{dims}")
    return specs
