"""`--format text`: findings for people, grouped by target and severity, then a one-line summary.

Printed through a rich Console built by the CLI at run time, so NO_COLOR and non-TTY output are plain text.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.text import Text

from auditor.findings import GUESS_NOTE, CaptureInfo, Finding, Report, Severity, TargetResult
from auditor.report import Group, grouped, grouped_fixes, others_text
from auditor.report.terminal import Terminal
from auditor.specs import inputs_text

STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def print_report(report: Report, console: Console, *, quiet: bool = False, verbose: bool = False, diff: bool = False) -> None:
    for result in report.results:
        if result.status == "skipped" or (result.status == "error" and not result.findings):
            continue  # skipped ones are listed below; what failed is said on stderr (by the CLI), with any findings here
        partial = result.capture is not None and result.capture.stopped is not None
        guessed = (result.capture is not None and result.capture.guessed) or bool(result.built and "guessed" in result.built)  # inputs or arguments
        if result.findings or partial or ((verbose or guessed or result.probes) and not quiet) or result.fixes or result.fixed_path:
            _print_result(result, console, verbose=verbose, quiet=quiet, diff=diff)
    if not quiet:
        _print_skipped(report, console)
        if report.edited is not None:
            for note in report.edited.notes:
                console.print(Text(f"note: {note}", style="dim"))
        fixes = edited_summary(report.edited) if report.edited is not None else fix_summary_line(report)
        if fixes is not None:
            console.print(fixes)
        classes = classes_line(report)
        if classes is not None:
            console.print(classes)
        console.print(summary_line(report))
        stale = stale_note(report)
        if stale is not None:
            console.print(stale)


def render(report: Report, *, quiet: bool = False) -> str:
    """The text report as plain text (no colour, no wrapping): what assertion and callback messages show."""
    buffer = io.StringIO()
    print_report(report, Terminal(file=buffer, no_color=True, highlight=False, soft_wrap=True, width=200), quiet=quiet)
    return buffer.getvalue()


def _print_result(result: TargetResult, console: Console, *, verbose: bool, quiet: bool = False, diff: bool = False) -> None:
    header = Text(result.target, style="bold")
    if result.capture is not None:
        header.append(f"  {result.capture.method}, {result.capture.nodes} nodes", style="dim")
    if verbose:
        header.append(f", {result.seconds:.2f} s", style="dim")
    console.print(header)
    if result.capture is not None and result.capture.guessed:  # what the audit rests on, said without -v
        console.print(Text(f"  input guessed: {guessed_text(result.capture)}", style="yellow"))
        for note in result.capture.notes:
            if note.startswith(GUESS_NOTE):
                console.print(Text(f"  note: {note[len(GUESS_NOTE):]}", style="dim"))
    if verbose and result.capture is not None:
        for note in result.capture.notes:
            if not note.startswith(GUESS_NOTE):
                console.print(Text(f"  note: {note}", style="dim"))
    elif result.capture is not None and result.capture.stopped:  # what was not audited, said without -v
        console.print(Text(f"  note: {result.capture.stopped}", style="yellow"))
    if result.built and (verbose or result.built != "built from its defaults"):
        console.print(Text(f"  {result.built}", style="yellow" if "guessed" in result.built else "dim"))
    covered = [c.name for c in (result.capture.classes if result.capture is not None else []) if c != result.model_class]
    if covered:
        shown = ", ".join(covered[:8]) + (f" and {len(covered) - 8} more" if len(covered) > 8 else "")
        console.print(Text(f"  covers: {shown}", style="dim"))
    if not quiet:
        _print_applied(result, console, verbose=verbose)
    ordered = sorted(result.findings, key=lambda f: (-f.severity, f.file or "", f.line or 0, f.code))
    for group in grouped(ordered):
        console.print(finding_text(group.first, group))
    if result.probes and not quiet:
        from auditor.report.probes import print_probes

        print_probes(result.probes, console)
    if not quiet:
        _print_written(result, console, diff=diff)
    console.print()


def guessed_text(capture: CaptureInfo) -> str:
    """`idx long 2x32 from Embedding(1000, 64) and pos_emb[32]; t long 2 as a timestep (one value per sample)`."""
    return inputs_text((record.name, record.spec, record.source) for record in capture.inputs)


def _print_applied(result: TargetResult, console: Console, *, verbose: bool) -> None:
    """--fix: each change (code, module, before => after, safety; the same change in several modules once, the
    others named after it) and why others were not made."""
    for fix, alike in grouped_fixes(result.fixes):
        line = Text("  fixed ", style="green")
        line.append(fix.code, style="bold")
        if fix.module is not None:
            line.append(f" [{fix.module or '<root>'}]", style="magenta")
        if fix.file is not None:  # an edit of the user's file, at the finding's line
            line.append(f" {fix.file}:{fix.line}", style="bold")
            line.append(f" {fix.action}")
            line.append(" (safe fix)" if fix.safe else " (unsafe fix: changes what it computes)", style="dim")
        else:
            line.append(f" {fix.action}")
            line.append(" (safe: outputs verified unchanged)" if fix.safe else " (changes behaviour)", style="dim")
        if alike:
            line.append(f"\n      {others_text([f.module for f in alike], 'alike')}", style="dim")
        console.print(line)
    if result.capture is not None and not verbose:  # with --verbose every note is printed above
        for note in result.capture.notes:
            if note.startswith("fix: "):
                console.print(Text(f"  note: {note[5:]}", style="dim"))


def _print_written(result: TargetResult, console: Console, *, diff: bool) -> None:
    """--fix: where the fixed model went and what its re-audit left (the findings listed above)."""
    if result.fixed_path is not None:
        remaining = len(result.findings)
        after = "nothing remains" if not remaining else f"{remaining} finding{'s' if remaining != 1 else ''} remain{'s' if remaining == 1 else ''}"
        notes = result.capture.notes if result.capture is not None else []
        checked = ("loaded on meta, ran a meta forward" if any(n.startswith("fix: weights were not carried") for n in notes)
                   else "loaded, ran on the example inputs")
        console.print(Text(f"  wrote {result.fixed_path} ({checked} and re-audited: {after})", style="bold"))
    if diff and result.fix_diff:
        console.print(Text(result.fix_diff.rstrip("\n")))


def _print_skipped(report: Report, console: Console) -> None:
    """Models found but not audited, each with why and the command that audits it: never a silent pass; then
    the files whose models could not even be listed."""
    for title, results in (("Not audited", report.skipped), ("Not imported", report.files_not_read)):
        if not results:
            continue
        console.print(Text(f"{title} ({len(results)}):", style="bold yellow"))
        for result in results:
            line = Text("  ")
            line.append(result.target, style="bold")
            line.append(f" skipped: {result.reason}")
            console.print(line)
        console.print()


def classes_line(report: Report) -> Text | None:
    """"12 classes: 8 audited, 3 covered, 1 not audited": every nn.Module class the run found, once."""
    counts = report.classes()
    if not counts["defined"]:
        return None
    text = Text(f"{_plural(counts['defined'], 'class')}: {counts['audited']} audited, {counts['covered']} covered")
    text.append(f", {counts['not_audited']} not audited", style="yellow" if counts["not_audited"] else "")
    return text


def finding_text(finding: Finding, group: Group | None = None) -> Text:
    line = Text("  ")
    where = f"{finding.file}:{finding.line}" if finding.file and finding.line else finding.file or "-"
    line.append(where, style="bold")
    line.append(" ")
    line.append(str(finding.severity), style=STYLE[finding.severity])
    line.append(" ")
    line.append(finding.code, style=STYLE[finding.severity])
    if finding.module is not None:
        line.append(f" [{finding.module or '<root>'}]", style="magenta")
    line.append(f" {finding.message}")
    if group is not None and group.others:
        line.append(f"\n      {group.others_text()}", style="dim")
    if finding.hint:
        fix_note = f" (fixable with {_fix_option(finding)})" if finding.fixable else ""
        line.append(f"\n      help: {finding.hint}{fix_note}", style="dim")
    return line


def fix_summary_line(report: Report) -> Text | None:
    """With --fix: how many fixes, how many keep outputs, how many fixed models were written."""
    fixes = [f for r in report.results for f in r.fixes]
    written = sum(1 for r in report.results if r.fixed_path)
    if not fixes and not written:
        return None
    safe = sum(1 for f in fixes if f.safe)
    text = Text(f"Applied {_plural(len(fixes), 'fix')}", style="bold green")
    if fixes:
        text.append(f" ({safe} keeping outputs, {len(fixes) - safe} changing behaviour)")
    text.append(f" and wrote {_plural(written, 'fixed model')}; the findings listed are what remains.")
    return text


def edited_summary(edited: Any) -> Text:
    """`--fix` in place: how many findings were fixed in how many files (`--diff`: would be), and how many unsafe
    fixes were left out."""
    verb = "Fixed" if edited.written else "Would fix"
    text = Text(f"{verb} {_plural(edited.applied, 'finding')}", style="bold green" if edited.applied else "bold")
    if edited.files:
        text.append(f" in {_plural(len(edited.files), 'file')} ({', '.join(edited.files)})")
    if edited.unsafe:
        text.append(f"; {_plural(edited.unsafe, 'more fix', 'more fixes')} with --unsafe-fixes", style="dim")
    text.append(".")
    return text


def summary_line(report: Report) -> Text:
    counts = report.summary()
    failed = len(report.failed_targets)
    targets, skipped = counts["targets"], counts["skipped"]
    total = counts["error"] + counts["warning"] + counts["info"]
    text = Text()
    hidden = report.baseline.hidden if report.baseline is not None else 0
    if total == 0 and not failed:
        if skipped and not report.models_audited:  # only source checks ran: never say the models passed
            text.append(f"No model was audited: {_plural(skipped, 'model')} skipped (listed above)", style="bold yellow")
            text.append(f"; source checks passed ({_plural(targets, 'file')}).", style="dim")
            return text
        text.append("All checks passed!", style="bold green")
        also = f"; {_plural(hidden, 'finding')} hidden by the baseline" if hidden else ""
        if not report.models_audited:
            text.append(f" ({_plural(targets, 'file')} checked; no model found{also})", style="dim")
            return text
        text.append(f" ({_plural(targets, 'target')} audited{also}{_skipped_note(skipped)})", style="dim")
        return text
    parts = [
        (counts["error"], "error", STYLE[Severity.ERROR]),
        (counts["warning"], "warning", STYLE[Severity.WARNING]),
        (counts["info"], "info", STYLE[Severity.INFO]),
    ]
    text.append("Found ")
    for index, (count, name, style) in enumerate(parts):
        text.append(f"{count} {name}" + ("s" if count != 1 and name != "info" else ""), style=style if count else "")
        text.append(", " if index < 2 else "")
    text.append(f" in {_plural(targets, 'target')}")
    if failed:
        text.append(f" ({_plural(failed, 'target')} failed)", style=STYLE[Severity.ERROR])
    if skipped:
        text.append(_skipped_note(skipped), style="yellow")
    fixable = [f for f in report.findings if f.fixable]
    unsafe = sum(1 for f in fixable if f.unsafe_fix)
    safe = len(fixable) - unsafe
    if safe:
        text.append(f"; {safe} fixable with `audit --fix`" + (f" ({unsafe} more with `--unsafe-fixes`)" if unsafe else ""), style="dim")
    elif unsafe:
        text.append(f"; {unsafe} fixable with `audit --fix --unsafe-fixes`", style="dim")
    if hidden:
        text.append(f"; {hidden} hidden by the baseline", style="dim")
    text.append(".")
    return text


def stale_note(report: Report, shown: int = 5) -> Text | None:
    """Baseline entries this run no longer finds: those of models still there (fixed since?), and those of
    models no longer in their file (renamed or removed?), listed with how to drop them."""
    if report.baseline is None or not report.baseline.stale:
        return None
    gone = set(report.baseline.gone)
    kinds = [("no longer found (fixed since?)", [e for e in report.baseline.stale if e.target not in gone]),
             ("of models no longer in their file (renamed or removed?)", [e for e in report.baseline.stale if e.target in gone])]
    file = report.baseline.file
    lines = []
    for why, stale in kinds:
        if not stale:
            continue
        count = sum(e.count for e in stale)
        names = [f"{e.code} in {e.target}" + (f" [{e.module or '<root>'}]" if e.module is not None else "") for e in stale[:shown]]
        more = f", ... ({len(stale) - shown} more)" if len(stale) > shown else ""
        lines.append(f"note: {count} baseline {'entry' if count == 1 else 'entries'} {why}: {', '.join(names)}{more}; "
                     f"`--write-baseline {file}` drops {'it' if count == 1 else 'them'}")
    return Text("\n".join(lines), style="dim")


def _skipped_note(skipped: int) -> str:
    return f"; {_plural(skipped, 'model')} skipped, not audited (listed above)" if skipped else ""


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    if plural is not None:
        return f"{count} {noun if count == 1 else plural}"
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith(("x", "s")) else "s")


def _fix_option(finding: Finding) -> str:
    """What applies a fixable finding's fix, as ruff says: `--fix` for a safe fix, `--fix --unsafe-fixes` for one
    that changes what the model or script computes."""
    return "--fix --unsafe-fixes" if finding.unsafe_fix else "--fix"
