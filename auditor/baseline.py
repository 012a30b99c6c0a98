"""Baselines: record today's findings, then fail only on new ones (`--write-baseline FILE`, `--baseline FILE`).

A finding matches a recorded one by its fingerprint: the rule's code, the target (its path relative to the
baseline's folder, so runs from any folder agree), the module and the rule's key (`Finding.key`; for a finding
without a module, such as a source check, the text of the line it points at), never a line number, so moved
lines and reordered files still match. Findings may share a fingerprint (one rule,
one module); the file records how many, and only that many are hidden. An entry whose target and rule ran
without finding it is stale (fixed since), and so is one of a model no longer in a file this run audited whole
(the class renamed or removed). The model's name is part of its target, hence of the fingerprint, as a test's
name is of its id: a renamed class's findings are new, and the old name's entries are listed as stale, so the
rename shows on both sides until the baseline is written again. SARIF output carries the same fingerprint as
`partialFingerprints`.
"""

from __future__ import annotations

import hashlib
import json
import linecache
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import UsageError
from auditor.findings import Finding, Report
from auditor.options import Options
from auditor.rule import find_rule

FORMAT_VERSION = 1
FIELDS = ("fingerprint", "code", "rule", "target", "module", "message", "count")


def fingerprint(finding: Finding, target: str) -> str:
    """The finding's identity across runs: a hash of code, target (as `portable` gives it), module and key."""
    parts = (finding.code, target, "-" if finding.module is None else finding.module, _key(finding))
    # surrogateescape: a file name that is not UTF-8 hashes as its bytes (the same name gives the same hash)
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def portable(target: str, root: Path) -> str:
    """A target with its file or folder relative to `root` (`models/net.py:Net`), whatever folder the run
    started in; an importable module's target (`pkg.models:build`) as it is."""
    location, colon, name = target.partition(":")
    path = Path(location)
    if not location or not path.exists():
        return target
    relative = Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()
    return relative + colon + name


def _key(finding: Finding) -> str:
    if finding.key is not None:
        return finding.key
    if finding.module is None and finding.file and finding.line:
        linecache.checkcache(finding.file)  # the file may have changed since this process last read it
        return " ".join(linecache.getline(finding.file, finding.line).split())
    return ""


@dataclass
class Entry:
    """One recorded finding (and how many findings share its fingerprint)."""

    fingerprint: str
    code: str
    rule: str
    target: str
    module: str | None
    message: str
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


@dataclass
class Outcome:
    """What a baseline did to one run: the findings it hid and its entries that no longer match anything."""

    file: str
    hidden: int = 0
    stale: list[Entry] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # targets of stale entries whose model is no longer in its file

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "hidden": self.hidden, "stale": [e.to_json() for e in self.stale], "gone": self.gone}


def entries(report: Report, root: Path) -> list[Entry]:
    """The report's findings as baseline entries (targets relative to `root`), in a stable order (the file
    diffs well under review)."""
    found: dict[str, Entry] = {}
    for result in report.results:
        target = portable(result.target, root)
        for finding in result.findings:
            mark = fingerprint(finding, target)
            if mark in found:
                found[mark].count += 1
            else:
                found[mark] = Entry(mark, finding.code, finding.rule, target, finding.module, finding.message)
    return sorted(found.values(), key=lambda e: (e.target, e.code, e.module or "", e.fingerprint))


def write(report: Report, path: Path) -> int:
    """Record every finding of `report` in `path`; returns how many."""
    recorded = entries(report, path.parent)
    document = {"version": FORMAT_VERSION, "tool": "auditor", "findings": [e.to_json() for e in recorded]}
    try:
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--write-baseline {path}: cannot write: {exc.strerror or exc}") from None
    return sum(e.count for e in recorded)


def load(path: Path) -> list[Entry]:
    """A baseline file's entries; a missing or malformed file is a usage error naming it."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"baseline {path}: no such file (create it with --write-baseline {path})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"baseline {path}: not a baseline file: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION or not isinstance(document.get("findings"), list):
        raise UsageError(f"baseline {path}: not a version {FORMAT_VERSION} baseline (write it again with --write-baseline)")
    try:
        return [Entry(**{name: record[name] for name in FIELDS}) for record in document["findings"]]
    except (KeyError, TypeError) as exc:
        raise UsageError(f"baseline {path}: malformed entry ({exc})") from None


def apply(report: Report, recorded: list[Entry], path: Path, options: Options) -> Outcome:
    """Remove the recorded findings from `report` (at most `count` per fingerprint), and record on it what was
    hidden and which entries are stale: entries of targets this run audited without error, for rules it ran."""
    remaining = Counter({e.fingerprint: e.count for e in recorded})
    outcome = Outcome(str(path))
    for result in report.results:
        target = portable(result.target, path.parent)
        kept = []
        for finding in result.findings:
            mark = fingerprint(finding, target)
            if remaining[mark] > 0:
                remaining[mark] -= 1
                outcome.hidden += 1
            else:
                kept.append(finding)
        result.findings = kept
    ran = {portable(r.target, path.parent): r.status for r in report.results}
    gone = {e.target for e in recorded if _model_gone(e.target, ran)}
    for entry in recorded:
        if remaining[entry.fingerprint] > 0 and (ran.get(entry.target) == "ok" or entry.target in gone) and _checked(entry, options):
            outcome.stale.append(Entry(**{**entry.to_json(), "count": remaining[entry.fingerprint]}))
    outcome.gone = sorted(gone & {e.target for e in outcome.stale})
    report.baseline = outcome
    return outcome


def _model_gone(target: str, ran: dict[str, str]) -> bool:
    """A model target (`net.py:Net`) whose file this run audited whole (the file's own result is ok, so every
    model in it has a result, audited or skipped) without a result for that model: renamed or removed."""
    file, colon, name = target.rpartition(":")
    return bool(colon and file and name) and ran.get(file) == "ok" and target not in ran


def _checked(entry: Entry, options: Options) -> bool:
    """Whether this run looked for the entry's finding: its rule was selected (and probes ran, for a probe
    rule). A rule no longer installed can match nothing: its entries are stale."""
    rule = find_rule(entry.code)
    if rule is None:
        return True
    return options.selection.enabled(rule.code, rule.name) and (rule.scope != "probe" or options.probe)
