"""Writing one fixed model into its (staged) folder: generated code for fx captures, the user's code plus the
fixed weights otherwise, then FIXES.md and, last, the manifest that marks the folder as --fix's.

The weights go in one step (`save_tensors` of the state_dict), so a variant that carries no weights (a model
audited on the meta device) is that step left out plus a manifest `kind` saying so.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from auditor.fixing.codegen import ModelSource, class_name_for, render_model, render_weights_loader, unsaved_buffers
from auditor.fixing.loop import Fixed
from auditor.fixing.rewrite import CannotFix
from auditor.fixing.verify import FixFailure
from auditor.fixing.writer import FolderContents, keeps_inputs, save_inputs, save_tensors, write_fixes, write_manifest


def contents_for(target: str, fixed: Fixed, inputs: tuple[Any, ...]) -> FolderContents:
    return FolderContents(target=target, kind="code" if fixed.method == "fx" else "weights",
                          fixes=list(fixed.fixes), notes=list(fixed.notes), input_specs=input_specs(inputs))


def render_source(gm: fx.GraphModule, class_name: str, target: str, specs: list[str], summary: list[str],
                  has_inputs: bool) -> tuple[str, list[str]]:
    """model.py's text for a GraphModule (and notes), raising FixFailure when it cannot be written."""
    source = ModelSource(class_name=class_name_for(class_name), origin=target, summary=summary,
                         has_inputs_file=has_inputs, input_specs=specs)
    try:
        return render_model(gm, source)
    except CannotFix as exc:
        raise FixFailure(f"cannot write the fixed model: {exc}") from exc


def save_fixed(folder: Path, fixed: Fixed, loaded: Any, inputs: tuple[Any, ...], contents: FolderContents,
               before: str | None) -> None:
    """Write the fixed model into `folder`; `before` is the generated code of the unfixed copy (for the diff)."""
    has_inputs = save_inputs(folder, inputs)
    summary = [f"{f.code} [{f.module or '<root>'}] {f.action}" for f in fixed.fixes]
    if fixed.method == "fx":
        gm = fixed.model
        assert isinstance(gm, fx.GraphModule)
        text, notes = render_source(gm, type(loaded.model).__name__, contents.target, contents.input_specs, summary, has_inputs)
        if before is not None:
            contents.diff = "".join(difflib.unified_diff(
                before.splitlines(keepends=True), text.splitlines(keepends=True), "before/model.py", "after/model.py"))
        contents.notes.extend(notes)
        fixed.notes.extend(notes)
        (folder / "model.py").write_text(text, encoding="utf-8")
        save_tensors(folder / "weights.pt", dict(gm.state_dict()))
        if unsaved_buffers(gm):
            save_tensors(folder / "buffers.pt", unsaved_buffers(gm))
    else:
        _save_weights_loader(folder, fixed, loaded, contents, summary, has_inputs)
    write_fixes(folder, contents)
    write_manifest(folder, contents, {} if has_inputs else {"inputs": contents.input_specs})


def render_before(gm: fx.GraphModule, class_name: str, target: str, inputs: tuple[Any, ...]) -> str | None:
    """The generated code of the copy before any fix (None when it cannot be generated: the real write says why)."""
    try:
        return render_source(gm, class_name, target, input_specs(inputs), [], keeps_inputs(inputs))[0]
    except FixFailure:
        return None


def _save_weights_loader(folder: Path, fixed: Fixed, loaded: Any, contents: FolderContents, summary: list[str],
                         has_inputs: bool) -> None:
    """For models torch.fx cannot trace: `model.py` rebuilds the model from the user's source and loads the
    fixed weights; parameters a fix removed (a folded bias) are removed again after building."""
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
    text = render_weights_loader(origin, dropped, contents.target, summary, has_inputs, contents.input_specs)
    (folder / "model.py").write_text(text, encoding="utf-8")
    save_tensors(folder / "weights.pt", current)


def input_specs(inputs: tuple[Any, ...]) -> list[str]:
    """`--input`-style specs of the example inputs (`2,3,16,16`, `int64:2,128`)."""
    specs = []
    for value in inputs:
        if isinstance(value, torch.Tensor):
            dims = ",".join(str(d) for d in value.shape) or "1"
            dtype = str(value.dtype).replace("torch.", "")
            specs.append(dims if dtype == "float32" else f"{dtype}:{dims}")
    return specs
