"""`--fix` in place: the audit plans an edit per fixable finding, this session applies them to the user's files and
proves them by auditing again; `--diff` makes the same rounds on the files' content in memory and shows the whole
change, writing nothing.

1. The targets are audited as usual, each model in its child process, which also plans the source edits of its
   findings (`planning.py`); a file's source findings are planned here. Edits of one file are applied together,
   in one pass (`apply.py`); the same change planned by several models (one class, many instances) once; an edit
   that collides with an earlier one waits for the next round. Only edits of the user's own Python files, of a
   file unchanged since it was audited, and (without `--unsafe-fixes`) only safe ones.
2. The files are written atomically, and every target is audited again in fresh child processes: the edited
   files are imported anew and the models rebuilt. An edit is rolled back (its file rewritten without it, and
   audited again) when a model it touches no longer builds, when the model's parameter names changed beyond the
   renames, additions and removals the edit declares, or when its finding is still reported.
3. The re-audit plans too: a finding a fix exposed (a bias before the BatchNorm NRM001 just moved) is fixed in the
   next round, up to `MAX_ROUNDS`. Each finding is tried once.

The originals are kept in memory until the run ends; an interrupted round restores them. `--diff` writes the edited
content into `FixOptions.unwritten` instead of the files: every audit of a later round reads and imports the files
as that content (`auditor.files.unwritten`, here and in the children), and the diff is of the originals against
what the last round kept, as `--fix` would leave the files.
"""

from __future__ import annotations

import difflib
import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from auditor.files import unwritten
from auditor.findings import AppliedFix, TargetResult
from auditor.locations import display_path
from auditor.options import FixOptions
from auditor.selection import forget_lines
from auditor.sourcefix.apply import EditError, apply_ops
from auditor.sourcefix.files import editable, write_atomically
from auditor.sourcefix.ops import SourceEdit, without_numbers
from auditor.sourcefix.source import digest

MAX_ROUNDS = 3  # a fix may expose a finding another fix repairs (NRM001 then NRM002); each finding is tried once
MAX_CHECKS = 3  # re-audits in one round: after rolling back edits, what is kept is audited again

Run = Callable[[], list[TargetResult]]


@dataclass
class Edited:
    """What `--fix` in place did to the user's files, or `--diff` would do (`Report.edited`)."""

    written: bool  # False for --diff
    files: list[str] = field(default_factory=list)  # changed files, as displayed
    diffs: list[str] = field(default_factory=list)  # --diff: one unified diff per file
    applied: int = 0  # findings fixed (--diff: findings the edits would fix)
    unsafe: int = 0  # findings with an unsafe edit left out (no --unsafe-fixes)
    notes: list[str] = field(default_factory=list)  # what a file's source findings could not get


@dataclass(eq=False)
class _Group:
    """One change to one file, and every finding it fixes (models built from one class plan it once each)."""

    edits: list[SourceEdit]

    @property
    def first(self) -> SourceEdit:
        return self.edits[0]

    @property
    def path(self) -> str:
        return self.first.path


def fix_in_place(options: FixOptions, run: Run, roots: Iterable[Path]) -> tuple[list[TargetResult], Edited]:
    """Audit, edit the user's files, re-audit (see the module doc); returns the final results and what changed."""
    return _Session(options, run, list(roots)).go()


class _Session:
    def __init__(self, options: FixOptions, run: Run, roots: list[Path]) -> None:
        self.options = options
        self.run = run
        self.roots = roots
        self.edited = Edited(written=not options.diff)
        self.notes: dict[str, list[str]] = defaultdict(list)  # target label -> "fix: ..." notes
        self.tried: set[tuple[str, ...]] = set()  # SourceEdit.identity
        self.unsafe: set[tuple[str, ...]] = set()
        self.kept: list[_Group] = []
        self.originals: dict[str, bytes] = {}  # every file changed, as it was before the run

    def go(self) -> tuple[list[TargetResult], Edited]:
        results = first = self._run()
        try:
            for number in range(MAX_ROUNDS):
                groups = self._candidates(results, first=number == 0)
                if not groups:
                    break
                results, kept = self._round(results, groups)
                self.kept += kept
                if not kept:
                    break
            if not self.edited.written:
                self._show()
                results, self.kept = first, []  # --diff reports the files as they are
        finally:
            self.options.unwritten.clear()
        return self._final(results), self.edited

    def _run(self) -> list[TargetResult]:
        forget_lines()  # the suppression comments of the files as they are now
        with unwritten(self.options.unwritten):  # --diff: the parent's own reads (a script's planning) see it too
            return self.run()

    def _read(self, path: str) -> bytes:
        """The file's content as the run sees it (--diff: the edits kept so far, never written)."""
        kept = self.options.unwritten.get(os.path.realpath(path))
        return Path(path).read_bytes() if kept is None else kept

    # --- choosing ---------------------------------------------------------------------------------------------------
    def _candidates(self, results: list[TargetResult], first: bool) -> list[_Group]:
        """The planned edits not tried yet that may be applied, grouped by change, colliding ones left out."""
        by_key: dict[tuple, _Group] = {}
        for result in results:
            planned = result.planned
            if planned is None:
                continue
            for note in planned.unfixed:
                self._note(result.target, f"{note}; not fixed in the source")
            for edit in planned.edits:
                edit = edit if edit.target else replace(edit, target=result.target)
                finding = edit.identity
                if finding in self.tried or (edit.module is None and not first):
                    continue
                why = self._refusal(edit)
                if why is not None:
                    self.tried.add(finding)
                    self._note(edit.target, f"{edit.finding}: {why}")
                    continue
                if not edit.safe and not self.options.unsafe:
                    if finding not in self.unsafe:
                        self.unsafe.add(finding)
                        self._note(edit.target, f"{edit.finding}: its fix changes what the model or script computes ({edit.action}); rerun with --unsafe-fixes to apply it")
                    continue
                self.tried.add(finding)
                by_key.setdefault(edit.key, _Group([])).edits.append(edit)
        self.edited.unsafe = len(self.unsafe)
        return self._compatible(list(by_key.values()))

    def _refusal(self, edit: SourceEdit) -> str | None:
        why = editable(edit.path, self.roots)
        if why is not None:
            return f"not fixed in the source: {why}"
        try:
            current = self._read(edit.path)
        except OSError as exc:
            return f"{display_path(edit.path)} cannot be read: {exc.strerror or exc}"
        if digest(current) != edit.digest:
            return f"{display_path(edit.path)} changed while it was audited: not edited"
        return None

    def _compatible(self, groups: list[_Group]) -> list[_Group]:
        """Per file, the groups that apply together, in order; one that collides with those before is noted."""
        chosen: list[_Group] = []
        by_file: dict[str, list[_Group]] = defaultdict(list)
        for group in groups:
            by_file[group.path].append(group)
        for path, candidates in by_file.items():
            original = self._read(path)
            accepted: list[_Group] = []
            for group in candidates:
                if _renames(group) & {name for g in accepted for name in _renames(g)}:
                    for edit in group.edits:  # two reorders of one container: each declares its renames alone
                        self.tried.discard(edit.identity)  # so this one waits for the next round, re-planned
                    continue
                try:
                    apply_ops(original, [op for g in [*accepted, group] for op in g.first.ops])
                except EditError as exc:
                    for edit in group.edits:
                        self._note(edit.target, f"{edit.finding}: its edit collides with another fix ({exc}); rerun --fix for it")
                        self.tried.discard(edit.identity)
                    continue
                accepted.append(group)
            chosen += accepted
        return chosen

    # --- applying and checking --------------------------------------------------------------------------------------
    def _round(self, results: list[TargetResult], groups: list[_Group]) -> tuple[list[TargetResult], list[_Group]]:
        before = {path: self._read(path) for path in {g.path for g in groups}}
        for path, data in before.items():
            self.originals.setdefault(path, data)
        try:
            after = self._write(before, groups)
            checked = self._run()
            for _ in range(MAX_CHECKS):
                failing = self._check(results, checked, groups, before, after)
                if not failing:
                    return checked, groups
                for group, reason in failing.items():
                    for edit in group.edits:
                        self._note(edit.target, f"{edit.finding}: the edit ({edit.action}) was rolled back: {reason}")
                groups = [g for g in groups if g not in failing]
                after = self._write(before, groups)
                checked = self._run()
            self._restore(before)
            return self._run(), []
        except BaseException:
            self._restore(before)
            raise

    def _write(self, before: dict[str, bytes], groups: list[_Group]) -> dict[str, bytes]:
        after = {}
        for path, data in before.items():
            ops = [op for g in groups if g.path == path for op in g.first.ops]
            after[path] = apply_ops(data, ops) if ops else data
            self._put(path, after[path])
        return after

    def _restore(self, before: dict[str, bytes]) -> None:
        for path, data in before.items():
            self._put(path, data)

    def _put(self, path: str, data: bytes) -> None:
        """`data` as the file's content: written (atomically), or with --diff kept for the next audits."""
        if not self.edited.written:
            self.options.unwritten[os.path.realpath(path)] = data
        elif Path(path).read_bytes() != data:
            write_atomically(path, data)

    def _check(self, results: list[TargetResult], checked: list[TargetResult], groups: list[_Group],
               before: dict[str, bytes], after: dict[str, bytes]) -> dict[_Group, str]:
        """The groups to roll back, each with why: a model they touch no longer builds, its parameter names
        changed beyond what the edits declare, or their finding is still reported."""
        old = {r.target: r for r in results}
        new = {r.target: r for r in checked}
        failing: dict[_Group, str] = {}
        broken = [(label, new.get(label)) for label, r in old.items() if r.status == "ok" and (label not in new or new[label].status != "ok")]
        for label, result in broken:
            why = f"{label} no longer audits ({result.error if result is not None else 'it is no longer found'})"
            touching = [g for g in groups if any(e.target == label for e in g.edits)]
            for group in touching or groups:  # an edit of a shared file broke a model that planned nothing: all of them
                failing.setdefault(group, why)
        for label, edits in _by_target(groups).items():
            if label not in new or new[label].status != "ok" or label not in old:
                continue
            changed = _unexplained_parameters(old[label], new[label], [e for _, e in edits])
            for group, edit in edits:
                if changed is not None:
                    failing.setdefault(group, f"the parameter names of {label} changed beyond the fix ({changed})")
                elif _still_reported(edit, new[label], before.get(edit.path), after.get(edit.path)):
                    failing.setdefault(group, "the finding is still reported after it")
        return failing

    # --- reporting --------------------------------------------------------------------------------------------------
    def _show(self) -> None:
        """--diff: the unified diff of every file the kept edits change, from the original to the last round's."""
        for path, data in self.originals.items():
            edited = self._read(path)
            if edited == data:
                continue
            shown = display_path(path)
            self.edited.files.append(shown)
            self.edited.diffs.append("".join(difflib.unified_diff(
                data.decode("utf-8", "replace").splitlines(keepends=True), edited.decode("utf-8", "replace").splitlines(keepends=True),
                fromfile=shown, tofile=shown)))
        self.edited.applied = len({e.identity for g in self.kept for e in g.edits})

    def _final(self, results: list[TargetResult]) -> list[TargetResult]:
        by_label = {r.target: r for r in results}
        fixed = [(e.target, e) for g in self.kept for e in g.edits]
        for label, edit in fixed:
            result = by_label.get(label)
            if result is not None:
                result.fixes.append(AppliedFix(edit.code, edit.module, edit.action, edit.safe, edit.file, edit.line))
        self.edited.applied = self.edited.applied or len({e.identity for _, e in fixed})
        self.edited.files = self.edited.files or [display_path(p) for p in self.originals if Path(p).read_bytes() != self.originals[p]]
        for label, notes in self.notes.items():
            result = by_label.get(label)
            if result is not None and result.capture is not None:
                result.capture.notes.extend(f"fix: {n}" for n in notes)
            else:
                self.edited.notes.extend(f"{label}: {n}" for n in notes)
        for result in results:
            result.findings = [replace(f, fixable=(result.target, f.code, f.module, f.key, without_numbers(f.message)) in self.unsafe)
                               for f in result.findings]
            result.planned = None
        return results

    def _note(self, label: str, text: str) -> None:
        if text not in self.notes[label]:
            self.notes[label].append(text)


def _by_target(groups: list[_Group]) -> dict[str, list[tuple[_Group, SourceEdit]]]:
    found: dict[str, list[tuple[_Group, SourceEdit]]] = defaultdict(list)
    for group in groups:
        for edit in group.edits:
            found[edit.target].append((group, edit))
    return found


def _renames(group: _Group) -> set[tuple[str, str]]:
    """The modules the group's edits rename, per target (a reordered nn.Sequential renumbers its entries)."""
    return {(edit.target, name) for edit in group.edits for name, _ in edit.renamed}


def _unexplained_parameters(old: TargetResult, new: TargetResult, edits: list[SourceEdit]) -> str | None:
    """How the model's parameter names differ from what the edits declare (renamed modules, new modules,
    dropped parameters), or None when they do not."""
    before = old.planned.parameters if old.planned is not None else None
    after = new.planned.parameters if new.planned is not None else None
    if before is None or after is None:
        return None
    renamed = dict(pair for e in edits for pair in e.renamed)
    dropped = {name for e in edits for name in e.dropped}
    added = tuple(f"{m}." for e in edits for m in e.added)
    expected = {_renamed(name, renamed) for name in before if name not in dropped}
    actual = {name for name in after if not name.startswith(added)} if added else set(after)
    if expected == actual:
        return None
    gone, new_names = sorted(expected - actual), sorted(actual - expected)
    parts = ([f"lost {', '.join(gone[:3])}"] if gone else []) + ([f"gained {', '.join(new_names[:3])}"] if new_names else [])
    return "; ".join(parts)


def _renamed(name: str, renamed: dict[str, str]) -> str:
    """A parameter's or module's name after its enclosing modules were renamed (the longest match wins)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in renamed:
            return ".".join([renamed[prefix], *parts[cut:]])
    return name


def _still_reported(edit: SourceEdit, result: TargetResult, before: bytes | None, after: bytes | None) -> bool:
    """Whether the re-audit still reports the edit's finding: the same code on the (renamed) module, or for a
    source finding (no module) on the line its old line became."""
    if edit.module is not None:
        module = _renamed(edit.module, dict(edit.renamed))
        return any(f.code == edit.code and f.module == module and f.key == edit.finding_key
                   and without_numbers(f.message) == edit.finding_text for f in result.findings)
    lines = _moved_lines(before, after, edit.line) if edit.line is not None else set()
    return any(f.code == edit.code and f.line in lines for f in result.findings)


def _moved_lines(before: bytes | None, after: bytes | None, line: int) -> set[int]:
    """Where line `line` of `before` is in `after` (the lines that replaced it, when it was edited)."""
    if before is None or after is None:
        return {line}
    old, new = before.decode("utf-8", "replace").splitlines(), after.decode("utf-8", "replace").splitlines()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if i1 <= line - 1 < i2:
            if tag == "equal":
                return {j1 + (line - 1 - i1) + 1}
            return set(range(j1 + 1, j2 + 1)) or {j1 + 1}
    return {line}
