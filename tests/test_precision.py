"""One finding per cause, in the words of the cause: what the rules say on the precision cases of real code
(a dropout feeding several norms, needless projection shortcuts, a per-time-step BatchNorm), beyond the
(code, line) marks the fixtures check."""

from __future__ import annotations

from support import FIXTURES, model_results, run

RULES = FIXTURES / "rules"


def _findings(name: str, inputs: list[str], select: list[str]):
    [result] = model_results(run(RULES / name, inputs=inputs, select=select))
    return result.findings


def test_a_dropout_feeding_several_batchnorms_is_one_finding_naming_them():
    [finding] = _findings("dro002_many_norms.py", ["2,8,8,8"], ["DRO002"])
    assert finding.module == "drop"
    assert "feeds 3 BatchNorms" in finding.message
    for norm in ("`next.1`", "`side.1`", "`skip_norm`"):
        assert norm in finding.message


def test_needless_projections_are_named_as_the_missing_identity_path():
    findings = {f.module: f for f in run(RULES / "res003_plain.py", inputs=["2,4,4,4"], select=["RES003"]).findings}
    projection = findings["blocks.0.shortcut.0"]
    assert "the shortcuts of 30 blocks on it" in projection.message and "no skip connection" not in projection.message
    assert "input and output shapes match" in projection.message
    assert "no skip connection" in findings["features"].message and "max-normalized-depth is 29" in findings["features"].message
    assert "max-plain-depth is 20" in findings["body"].message


def test_a_batchnorm_over_time_steps_says_so():
    findings = {f.module: f.message for f in _findings("nrm003_recurrent.py", ["2,12,8"], ["NRM003"])}
    assert "normalizes each of the 12 time steps of the output of LSTM `lstm` [2, 12, 16]" in findings["norm_time"]
    assert "use LayerNorm(16)" in findings["norm_time"]
    assert "per-token features of a recurrent layer (from GRU `gru`)" in findings["norm_features"]
