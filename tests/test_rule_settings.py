"""Rule thresholds come from settings (`[tool.auditor.settings]`): changing one changes what fires."""

from __future__ import annotations

from support import FIXTURES, run

RULES = FIXTURES / "rules"


def _codes(path, **overrides) -> list[tuple[str, int | None]]:
    report = run(path, capture=("fx",), **overrides)
    return sorted((f.code, f.line) for r in report.results for f in r.findings)


def test_max_plain_depth_settings() -> None:
    """Chains without normalization are held to max-plain-depth, mostly normalized ones to max-normalized-depth."""
    path = RULES / "res003_plain.py"

    def lines(**settings: int) -> list[int | None]:
        return [line for _, line in _codes(path, inputs=["2,4,4,4"], select=["RES003"], settings=settings)]

    unnormalized, plain34, projections = lines()
    assert lines(**{"max-plain-depth": 22}) == [plain34, projections]
    assert lines(**{"max-normalized-depth": 34}) == [unnormalized]
    deeper = _codes(RULES / "res003_clean.py", inputs=["2,4,4,4"], select=["RES003"], settings={"max-normalized-depth": 10})
    assert len(deeper) == 2  # the 20- and 26-layer normalized stacks, not the residual one


def test_init_scale_settings() -> None:
    path = RULES / "ini001_scale.py"
    assert _codes(path, inputs=["2,64"], select=["INI001"])
    quiet = {"init-run-drift": 1e9, "init-gross-ratio": 100.0, "init-excess-ratio": 100.0}
    assert _codes(path, inputs=["2,64"], select=["INI001"], settings=quiet) == []
    gross = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "fc2 = nn.Linear(256" in text)
    excess_only = {"init-run-drift": 1e9, "init-gross-ratio": 100.0}  # fc2 is 11x He: above the 3x excess ratio
    assert _codes(path, inputs=["2,64"], select=["INI001"], settings=excess_only) == [("INI001", gross)]
    longer_runs = {"init-run-length": 9}
    lines = {line for _, line in _codes(path, inputs=["2,64"], select=["INI001"], settings=longer_runs)}
    assert lines == {gross}  # only the gross outlier: no run is 9 layers long


def test_orthogonal_tolerance_setting() -> None:
    path = RULES / "ini002_recurrent.py"
    assert len(_codes(path, inputs=["long:2,6"], select=["INI002"])) == 6
    assert _codes(path, inputs=["long:2,6"], select=["INI002"], settings={"orthogonal-tolerance": 10.0}) == []


def test_min_warmup_steps_setting() -> None:
    """A ramp of 3, 2, 5 and 4 steps is short against the default 10; against 3 only the 2-step one is."""
    path = FIXTURES / "training" / "trn008_short_warmup.py"
    assert len(run(path, select=["TRN008"]).results[0].findings) == 4
    stricter = run(path, select=["TRN008"], settings={"min-warmup-steps": 3}).results[0].findings
    assert [f.message.split(" warms")[0] for f in stricter] == ["`TrainingArguments(...)`"]
