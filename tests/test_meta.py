"""Audits without weights (auditor/loading/meta.py): decided once while loading, against --max-memory or with
--meta; on meta every structural finding equals the one on real weights, the init rules read the recorded init
calls; probes, which need the weights, are refused in one line (--fix without weights: test_fix_without_weights.py);
Hugging Face config.json targets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import auditor
from auditor.errors import TargetError
from auditor.locations import display_path
from support import FIXTURES, expected_marks, fixture_header, invoke, model_results, run

CANONICAL = sorted((FIXTURES / "canonical").glob("*.py"))
RULE_FIXTURES = sorted((FIXTURES / "rules").glob("*.py"))
# Fixtures whose findings depend most on how a capture runs: failing adds stepped over, functional calls,
# attention internals, in-place ops, init records.
CAPTURE_SENSITIVE = ["res001_shortcut", "res002_broadcast", "dro001_functional", "nrm003_attention_block", "nrm002_bias", "ini002_clean", "ini003_constant"]
MODELS = FIXTURES / "models"


def _findings(report) -> list[tuple[str, str, str | None, str | None, int | None]]:
    return sorted((r.target, f.code, f.module, f.file, f.line) for r in report.results for f in r.findings)


def _audit(path: Path, **overrides):
    header = fixture_header(path)
    if "capture" in header and "capture" not in overrides:
        overrides["capture"] = tuple(header["capture"])
    return run(path, inputs=header.get("input", []), select=header.get("select", ["ALL"]), **overrides)


def _on_meta(report) -> None:
    for result in model_results(report):
        assert result.status == "ok", result.error
        assert any(n.startswith("audited on meta") for n in result.capture.notes)
        assert not [n for n in result.capture.notes if n.startswith("init not known")], result.capture.notes


@pytest.mark.parametrize("path", CANONICAL, ids=lambda p: p.stem)
def test_canonical_findings_on_meta_equal_findings_on_real_weights(path):
    meta = _audit(path, meta=True)
    _on_meta(meta)
    assert _findings(meta) == _findings(_audit(path))


@pytest.mark.parametrize("path", RULE_FIXTURES, ids=lambda p: p.stem)
def test_rule_fixture_findings_on_meta_are_the_marked_ones(path):
    """The marks are what every capture finds on real weights (test_rule_fixtures): meta must find the same."""
    meta = _audit(path, meta=True)
    _on_meta(meta)
    assert {(f.code, f.line) for r in meta.results for f in r.findings} == expected_marks(path)


@pytest.mark.parametrize("method", ["export", "hooks"])
@pytest.mark.parametrize("name", CAPTURE_SENSITIVE)
def test_every_capture_runs_on_meta(name, method):
    path = FIXTURES / "rules" / f"{name}.py"
    if method not in fixture_header(path).get("capture", [method]):
        pytest.skip(f"{path.name} is not audited with {method} on real weights either")
    report = _audit(path, meta=True, capture=(method,))
    for result in model_results(report):
        assert result.status == "ok" and result.capture.method == method, result.error
    assert {(f.code, f.line) for r in report.results for f in r.findings} == expected_marks(path)


FAULTY = str(FIXTURES / "rules" / "dro001_modules.py")


def test_the_budget_decides_and_the_result_says_so():
    over = json.loads(invoke("--format", "json", "--max-memory", "1KB", FAULTY).stdout)
    within = json.loads(invoke("--format", "json", "--max-memory", "4GiB", FAULTY).stdout)
    notes = [n for r in over["results"] if r["capture"] for n in r["capture"]["notes"]]
    assert any("audited on meta" in n and "exceed the 1000 B budget" in n and "--max-memory" in n for n in notes)
    assert not [n for r in within["results"] if r["capture"] for n in r["capture"]["notes"] if "meta" in n]
    assert [r["findings"] for r in over["results"]] == [r["findings"] for r in within["results"]]


def test_max_memory_in_the_config(tmp_path):
    config = tmp_path / "pyproject.toml"
    config.write_text('[tool.auditor]\nmax-memory = "1KB"\n')
    document = json.loads(invoke("--config", str(config), "--format", "json", FAULTY).stdout)
    assert any("audited on meta" in n for r in document["results"] if r["capture"] for n in r["capture"]["notes"])
    config.write_text('[tool.auditor]\nmax-memory = "a lot"\n')
    result = invoke("--config", str(config), FAULTY)
    assert result.exit_code == 2 and f"max-memory in {config}: 'a lot': expected a size" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-memory", "lots", FAULTY], "--max-memory 'lots': expected a size such as 8GiB, 500MB or 2.5GB"),
        (["--meta", "--probe", FAULTY], "--probe needs real weights; it cannot run with --meta"),
    ],
)
def test_meta_usage_errors_exit_2_with_one_line(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_probe_over_the_budget_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--format", "json", "--max-memory", "1KB", "--probe", FAULTY)
    assert result.exit_code == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1
    assert "--probe needs the real weights" in errors[0] and "exceed the 1000 B budget" in errors[0]
    assert "--max-memory" in errors[0]
    audited = [r for r in json.loads(result.stdout)["results"] if r["capture"]]
    assert audited and all(r["findings"] for r in audited)  # the structure was still audited


def test_probe_within_the_budget_runs():
    report = run(FAULTY, probe=True, max_memory=2**32)
    assert all(r.status == "ok" and r.probes for r in model_results(report))


def test_a_forward_that_reads_values_says_it_ran_on_meta():
    [result] = model_results(run(f"{MODELS / 'data_dependent.py'}", meta=True))
    assert result.status == "error"
    assert "audited on meta, without weights: --meta" in result.error


def test_an_instance_made_at_import_is_never_moved(tmp_path):
    path = tmp_path / "instance.py"
    path.write_text("import torch.nn as nn\n\nmodel = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))\n")
    [result] = model_results(run(path, meta=True))
    assert result.status == "ok"
    assert not [n for n in result.capture.notes if "meta" in n]  # it was real before the tool saw it


EDGES = """
import torch
import torch.nn as nn


def moved():
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 2)).to("cpu").to(torch.bfloat16)


def lazy():
    return nn.Sequential(nn.LazyLinear(16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 2))


def weight_normed():
    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(8, 16)), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 2))
"""


@pytest.mark.parametrize(
    ("name", "on_meta", "note"),
    [
        ("moved", True, None),  # .to("cpu") keeps meta parameters on meta; the dtype still applies
        ("lazy", False, None),  # lazy parameters get their shape from a forward: built with weights
        ("weight_normed", True, "computed from other weights while the model was built without them"),
    ],
)
def test_factories_that_move_defer_or_derive_their_weights(tmp_path, name, on_meta, note):
    path = tmp_path / "edges.py"
    path.write_text(EDGES)
    [result] = model_results(run(f"{path}:{name}", meta=True, inputs=["bfloat16:2,8" if name == "moved" else "2,8"]))
    assert result.status == "ok", result.error
    assert {f.code for f in result.findings} == {"DRO001"}
    assert any(n.startswith("audited on meta") for n in result.capture.notes) == on_meta
    if note is not None:
        assert any(note in n for n in result.capture.notes), result.capture.notes


def test_live_models_on_meta_audit_but_do_not_probe():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1), nn.ReLU(), nn.Linear(8, 2))
    report = auditor.audit(model, torch.zeros(2, 8, device="meta"))
    assert {f.code for f in report.findings} == {"DRO001"}
    with pytest.raises(TargetError, match="--probe needs the real weights"):
        auditor.audit(model, torch.zeros(2, 8, device="meta"), probe=True)


# --- Hugging Face config.json -----------------------------------------------------------------------------------


def _config(tmp_path: Path, fields: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(fields))
    return path


SMALL_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 1000,
    "bos_token_id": 0, "eos_token_id": 0,
}


def test_config_json_without_transformers_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    path = _config(tmp_path, SMALL_LLAMA)
    [result] = run(path).results
    assert result.status == "error"
    assert result.error == f"{display_path(str(path))}: a Hugging Face config needs transformers, which is not installed (pip install transformers)"


@pytest.mark.parametrize(
    ("text", "message"),
    [('{"hidden_size": 8}', 'not a Hugging Face model config (it has no "model_type")'), ("{\n  nope", "2: not valid JSON")],
    ids=["not a config", "broken JSON"],
)
def test_a_json_that_is_not_a_config_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    result = invoke(str(path))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"audit: error: {path}: {display_path(str(path))}:{message}" or message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.zoo
def test_config_json_builds_the_architecture_on_real_weights_and_on_meta(tmp_path):
    pytest.importorskip("transformers")
    path = _config(tmp_path, SMALL_LLAMA)
    real, meta = run(path), run(path, meta=True)
    [result] = meta.results
    assert result.status == "ok", result.error
    assert result.target == display_path(str(path))
    assert any(n.startswith("audited on meta") for n in result.capture.notes)
    assert real.results[0].status == "ok" and _findings(real) == _findings(meta)


@pytest.mark.zoo
def test_an_unknown_model_type_is_one_clear_line(tmp_path):
    pytest.importorskip("transformers")
    [result] = run(_config(tmp_path, {"model_type": "no-such-model"})).results
    assert result.status == "error"
    assert "cannot read this config (model_type 'no-such-model')" in result.error


@pytest.mark.zoo
def test_kwargs_override_config_fields(tmp_path):
    pytest.importorskip("transformers")
    from auditor.loading.models import ModelLoader
    from auditor.targets import parse_target

    [target] = parse_target(str(_config(tmp_path, SMALL_LLAMA)))
    target.kwargs = {"num_hidden_layers": 1}
    [loaded] = ModelLoader().load(target)
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and len(loaded.model.model.layers) == 1


@pytest.mark.zoo
def test_a_70b_config_is_audited_on_meta_by_itself(tmp_path):
    pytest.importorskip("transformers")
    path = _config(tmp_path, {
        **SMALL_LLAMA, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
        "num_key_value_heads": 8, "num_hidden_layers": 80, "vocab_size": 128256, "torch_dtype": "bfloat16",
    })
    [result] = run(path).results
    assert result.status == "ok", result.error
    assert any("its weights (131 GiB) exceed" in n for n in result.capture.notes), result.capture.notes


def test_a_forward_that_reads_values_only_when_not_traced_is_exported_on_meta():
    """The eager pass on meta cannot read the values; that settles nothing, so torch.export still gets its try."""
    target = f"{MODELS / 'reads_values_unless_traced.py'}"
    meta = run(target, meta=True)
    _on_meta(meta)
    assert [r.capture.method for r in model_results(meta)] == ["export"]
    assert _findings(meta) == _findings(run(target)) != []


def test_a_40_gb_layer_is_built_on_meta_from_the_start():
    """`Linear(100000, 100000)` needs 40 GB: with --meta, and over the budget without it, every weight is made on
    meta by the factory call itself (no tensor is ever real), and the init record still knows how it is drawn."""
    from auditor.loading.importing import import_file
    from auditor.loading.meta import MetaBuilder, WeightPolicy

    huge = import_file(MODELS / "huge.py")
    for policy in (WeightPolicy(meta=True), WeightPolicy(max_memory=2**30)):
        builder = MetaBuilder(policy)
        model = builder.build(huge.Huge)
        weights = builder.weights_of(model)
        assert weights.on_meta and weights.size == (100_000 * 100_000 + 100_000 + 100_000 * 30_000) * 4
        assert all(p.is_meta for p in model.parameters())
        std, _ = weights.inits.init_of(model.fc.weight).std_mean()
        assert std == pytest.approx(1 / (3 * 100_000) ** 0.5)  # kaiming_uniform_(a=sqrt(5)), recorded
        assert weights.inits.init_of(model.table).std_mean() == pytest.approx((0.02, 0.0))
    result = invoke("--format", "json", "--meta", f"{MODELS / 'huge.py'}:Huge", "--input", "2,100000")
    assert result.exit_code == 0, result.output
    [audited] = json.loads(result.stdout)["results"]
    assert audited["status"] == "ok" and "audited on meta, without weights: --meta" in audited["capture"]["notes"]


def test_a_build_with_weights_stops_before_it_allocates_past_the_budget():
    [result] = model_results(run(f"{MODELS / 'huge.py'}:ReadsItsWeights", max_memory=2**28))
    assert result.status == "error"
    assert "its weights exceed the 256 MiB budget (more than 1.5 GiB) and it cannot be built on meta" in result.error
