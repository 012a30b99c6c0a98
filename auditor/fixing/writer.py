"""The fixed-model folder and the atomic `--out`.

A fixed model is a folder (written by `save.py`):

    model.py             generated code: the model's class, load_model(), example_inputs()
    weights.pt           its state_dict, tensors only (torch.load(..., weights_only=True)); none for a model
                         fixed without its weights (its model.py draws them: INITS)
    buffers.pt           its non-persistent buffers, which state_dict() leaves out (only when it has some);
                         without weights, every buffer whose values the build computed
    config.json          the Hugging Face config the model is built from (a config.json target torch.fx cannot trace)
    inputs.pt            the example inputs the audit ran it on (tensors only; omitted when large)
    auditor-fixed.json   the manifest `audit DIR` loads: {"format", "module", "factory", "target", "kind", "files", ...}
    FIXES.md             what changed (code, module, before => after, safety) and what remains

`--out` is written through a staging folder next to it and renamed into place at the end, so a failure leaves
no half-written output. With one fixed model, `--out` is that model's folder; with several, `--out` holds one
folder per model and a manifest listing them. The manifest is also the marker of a folder --fix wrote: it records
the sha256 of every file written there (`auditor.manifest`), and `--force` replaces an existing `--out` only when
it is such a folder whose files are all still as written, with nothing else in it (`manifest.problem` says
why not otherwise); any other folder or file is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor import __version__
from auditor.errors import TargetError
from auditor.findings import AppliedFix
from auditor.manifest import FIXED_MANIFEST, FORMAT, manifest_files, problem

INPUTS_LIMIT = 32 * 2**20  # bytes of example inputs worth keeping next to the model


@dataclass
class FolderContents:
    """What goes into one fixed model's folder besides the code."""

    target: str  # the audited target, as results name it
    kind: str  # "code" (generated from the fx graph) or "weights" (the user's code rebuilds it)
    fixes: list[AppliedFix] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    input_specs: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)  # filled after the re-audit
    diff: str | None = None
    without_weights: str | None = None  # why the model was fixed without its weights (None: they are carried)


def save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    """Tensors only (loadable with weights_only=True); a view is saved as its own values, not its whole storage,
    and nothing else is copied first."""
    import torch

    torch.save({k: _compact(v.detach().cpu()) for k, v in tensors.items()}, path)


def _compact(tensor: Any) -> Any:
    whole = tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole else tensor.clone()


def keeps_inputs(inputs: tuple[Any, ...]) -> bool:
    """Whether the example inputs go into inputs.pt: plain tensors of reasonable size."""
    import torch

    if not inputs or not all(isinstance(t, torch.Tensor) and not t.is_meta for t in inputs):
        return False
    return sum(t.numel() * t.element_size() for t in inputs) <= INPUTS_LIMIT


def save_inputs(folder: Path, inputs: tuple[Any, ...]) -> bool:
    """inputs.pt with the example inputs when `keeps_inputs`; returns whether it was written."""
    import torch

    if not keeps_inputs(inputs):
        return False
    torch.save([t.detach().cpu().clone() for t in inputs], folder / "inputs.pt")
    return True


def write_manifest(folder: Path, contents: FolderContents, extra: dict[str, Any] | None = None) -> None:
    """The manifest `audit DIR` loads, written last: the sha256 of every file in the folder (the marker of an
    intact --fix output, which `audit DIR` and `--force` check)."""
    manifest = {
        "format": FORMAT,
        "tool": f"auditor {__version__}",
        "kind": contents.kind,
        "module": "model.py",
        "factory": "load_model",
        "target": contents.target,
        "input_specs": contents.input_specs,
        "fixes": [f.to_json() for f in contents.fixes],
        "weights_carried": contents.without_weights is None,
        **(extra or {}),
        "files": manifest_files(folder),
    }
    (folder / FIXED_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def fixes_markdown(contents: FolderContents) -> str:
    lines = [f"# Fixes applied by `audit --fix` to {contents.target}", ""]
    if contents.fixes:
        lines += ["| code | module | before => after | safety |", "| --- | --- | --- | --- |"]
        for fix in contents.fixes:
            safety = "safe: outputs verified unchanged" if fix.safe else "changes behaviour"
            lines.append(f"| {fix.code} | `{fix.module or '<root>'}` | {fix.action.replace('|', '/')} | {safety} |")
    else:
        lines.append("No fix applied: the model is written unchanged.")
    if contents.without_weights is not None:
        lines += ["", "## Weights were not carried", "",
                  f"The model was audited and fixed without its weights ({contents.without_weights}): this folder holds",
                  "the fixed architecture and how to initialize it, not trained values. `load_model()` builds it and",
                  "initializes it as the notes below say (`INITS` in `model.py`); `load_model(\"meta\")` builds it without",
                  "memory. Load trained weights with `model.load_state_dict(...)`: unchanged layers keep their keys.",
                  "The fixes were checked on the meta device: the written model loads, runs a meta forward with the output",
                  "shapes of the fixed one, draws the planned init, and re-audits clean of what was fixed. Outputs cannot be",
                  "compared without weights, so no fix is listed as keeping them."]
    lines += ["", "`load_model()` in `model.py` returns the model in eval mode (every submodule alike, so its outputs are",
              "deterministic); call `.train()` on it to train."]
    if contents.kind == "weights":
        then = "loads the fixed weights" if contents.without_weights is None else "re-initializes what the fixes changed"
        lines += ["", "This model could not be traced with torch.fx, so its code is not regenerated: `model.py` rebuilds",
                  "it from your source file (which must stay where it is), or from the Hugging Face `config.json` copied",
                  f"here, and {then}."]
    else:
        lines += ["", "The module tree is yours: same attribute names, `nn.Sequential` / `nn.ModuleList` / `nn.ModuleDict`",
                  "containers kept, so unchanged layers keep their `state_dict()` keys and load from your old checkpoints.",
                  "Submodules built from your own classes are plain `nn.Module` parents (their code is in the model's",
                  "one `forward`): call the model, not its blocks."]
    if contents.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in contents.notes]
    lines += ["", "## Re-audit of the fixed model", ""]
    lines += [f"- {r}" for r in contents.remaining] or ["- nothing remains"]
    if contents.diff:
        lines += ["", "## Generated code, before => after", "", "```diff", contents.diff.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


def write_fixes(folder: Path, contents: FolderContents) -> None:
    """FIXES.md; written again once the re-audit says what remains, and then the manifest records it again."""
    (folder / "FIXES.md").write_text(fixes_markdown(contents), encoding="utf-8")
    manifest = folder / FIXED_MANIFEST
    if manifest.exists():
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        recorded["files"] = manifest_files(folder)
        manifest.write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")


# --- the atomic --out ----------------------------------------------------------------------------------------


class OutputFolder:
    """Stages fixed models next to `--out` and moves them into place in one step at the end."""

    def __init__(self, out: Path, force: bool = False) -> None:
        self.out = Path(os.path.abspath(out))
        self.force = force
        self._staging: Path | None = None
        self._staged: dict[str, Path] = {}  # name -> staged folder
        self._created: list[Path] = []  # parent folders made for --out, removed again if nothing is written

    def check(self) -> None:
        check_replaceable(self.out, self.force)

    def stage(self, label: str) -> Path:
        """A fresh folder for one model inside the staging area."""
        self.check()
        if self._staging is None:
            missing = [p for p in [self.out.parent, *self.out.parent.parents] if not p.exists()]
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._created = missing
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.auditor-", dir=self.out.parent))
        name = _unique(folder_name(label), self._staged)
        folder = self._staging / name
        folder.mkdir()
        self._staged[name] = folder
        return folder

    def discard(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        self._staged = {k: v for k, v in self._staged.items() if v != folder}

    def commit(self) -> dict[Path, Path]:
        """Move what was staged to `--out`; returns staged folder -> final folder. Nothing staged: nothing. The
        staging area is gone afterwards whatever happens (another run may have taken `--out` meanwhile)."""
        try:
            if self._staging is None or not self._staged:
                return {}
            self.check()
            return self._move_into_place(self._staging)
        finally:
            self.cleanup()

    def _move_into_place(self, staging: Path) -> dict[Path, Path]:
        if len(self._staged) == 1:
            (staged,) = self._staged.values()
            source, final = staged, {staged: self.out}
        else:
            top = {"format": FORMAT, "tool": f"auditor {__version__}", "models": sorted(self._staged), "files": {}}
            (staging / FIXED_MANIFEST).write_text(json.dumps(top, indent=2) + "\n", encoding="utf-8")
            source, final = staging, {v: self.out / k for k, v in self._staged.items()}
        old: Path | None = None
        if self.out.exists() or self.out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent)) / "old"
            os.replace(self.out, old)
        try:
            os.replace(source, self.out)
        except BaseException:
            if old is not None:
                os.replace(old, self.out)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old.parent, ignore_errors=True)
        return final

    def cleanup(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        self._staged = {}
        if not self.out.exists():
            for folder in self._created:  # innermost first
                with contextlib.suppress(OSError):
                    folder.rmdir()
        self._created = []


def check_replaceable(out: Path, force: bool) -> None:
    """Refuse (TargetError, one line) an existing `--out` unless `force` and it is an earlier --fix output."""
    if not (out.exists() or out.is_symlink()):
        return
    reason = problem(out)
    if reason is not None:
        raise TargetError(f"--out {out}: {reason}; --fix never replaces it (choose a new folder)")
    if not force:
        raise TargetError(f"--out {out}: already exists (an earlier --fix output); pass --force to replace it")


def folder_name(label: str) -> str:
    """`models/net.py:Net` -> `Net`; `net.py` -> `net`."""
    name = label.rsplit(":", 1)[1] if ":" in label and not re.match(r"^[A-Za-z]:[\\/]", label) else Path(label).stem
    return re.sub(r"[^\w.-]", "_", name).strip(".") or "model"


def _unique(name: str, taken: dict[str, Path]) -> str:
    if name not in taken:
        return name
    counter = 2
    while f"{name}-{counter}" in taken:
        counter += 1
    return f"{name}-{counter}"
