"""The effective settings of one run: config file and command line merged (the command line wins)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from auditor.findings import Severity
from auditor.selection import Selection

CAPTURE_METHODS = ("fx", "hooks", "export")


@dataclass
class FixOptions:
    out: Path | None  # None: fix in memory only (the Python API without `out`), or the user's files with `source`
    force: bool = False
    shortcut: str = "conv"  # RES001 shortcut: "conv" (1x1 conv + BN) or "pad" (parameter-free zero padding)
    skip_concat: str = "pad"  # RES004: "pad" the smaller operands of a skip concatenation, or "crop" the larger
    diff: bool = False  # --out: show the generated code's diff; in place: show the source diff, write nothing
    seed: int = 0  # re-inits and new layers are drawn from generators seeded with this
    source: bool = False  # edit the user's own files (`--fix` without `--out`, `--diff`): auditor.sourcefix
    unsafe: bool = False  # --unsafe-fixes: also the source edits that change what the model computes
    unwritten: dict[str, bytes] = field(default_factory=dict)  # --diff: files audited as this content, never written


@dataclass
class Options:
    selection: Selection = field(default_factory=Selection)
    settings: dict[str, Any] = field(default_factory=dict)  # every rule setting, defaults merged with the config
    fail_on: Severity = Severity.ERROR
    inputs: list[str] = field(default_factory=list)  # --input specs, one per positional forward argument
    kwargs: dict[str, Any] = field(default_factory=dict)
    probe: bool = False
    probe_loss: Callable[[Any, Any], Any] | None = None  # the API's `loss(model, output)`; None: the probes' surrogate
    plot: Path | None = None  # with probe: write the per-layer chart to this PNG (needs matplotlib)
    fix: FixOptions | None = None
    device: str | None = None  # None: cuda when available
    capture: tuple[str, ...] = CAPTURE_METHODS  # the methods to try, in order (--capture forces one)
    trust_pickle: bool = False
    verbose: bool = False
    meta: bool = False  # audit every model without materializing its weights
    max_memory: int | None = None  # bytes; above it a model is audited on meta (None: a share of available memory)
