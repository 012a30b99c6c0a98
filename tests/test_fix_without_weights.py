"""`--fix` on models audited without their weights (`--meta`, or over `--max-memory`): structural fixes write the
fixed architecture, re-inits are written as init code (INITS), the written folder loads on meta, runs a meta
forward, draws the planned init and re-audits clean of what was fixed; FIXES.md, the manifest and the result say
that no weights were carried. Small models forced through the meta path; the 20B GPT is opt-in (--run-slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import auditor
from auditor.fixing.codegen import _INITIALIZE as INITIALIZE
from auditor.fixing.initcode import InitTable, same_init
from auditor.loading.inits import recorded_writes
from auditor.options import FixOptions
from auditor.rule import all_rules
from auditor.targets import FIXED_MANIFEST
from support import FIXTURES, fix_fixtures, fixture_header, invoke, model_results, run

FIX = FIXTURES / "fix"
FIXABLE_CODES = {r.code for r in all_rules() if r.fixable}


def fixed_json(*args: str) -> tuple[dict, object]:
    result = invoke(*args, "--format", "json")
    models = [r for r in json.loads(result.stdout)["results"] if r["capture"]]
    assert len(models) == 1, result.output
    return models[0], result


def in_fresh_process(folder: Path, body: str, cwd: Path) -> str:
    """Run `body` with the written folder's `model` module imported, in a new interpreter; returns its stdout."""
    script = f"import sys, torch\nsys.path.insert(0, {str(folder)!r})\nimport model\n" + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- structural fixes --------------------------------------------------------------------------------------------


def test_structural_fixes_write_the_fixed_architecture_without_weights(tmp_path):
    out = tmp_path / "fixed"
    model, result = fixed_json(str(FIX / "mlp.py"), "--fix", "--out", str(out), "--meta")
    assert result.exit_code == 0, result.output
    assert model["status"] == "ok" and model["findings"] == []
    assert {f["code"] for f in model["fixes"]} == {"DRO002", "DRO003", "RES001"}
    assert not any(f["safe"] for f in model["fixes"])  # no outputs to compare without weights
    assert any(n.startswith("fix: weights were not carried") for n in model["capture"]["notes"])
    assert sorted(p.name for p in out.iterdir()) == ["FIXES.md", FIXED_MANIFEST, "buffers.pt", "model.py"]
    manifest = json.loads((out / FIXED_MANIFEST).read_text())
    assert manifest["weights_carried"] is False and manifest["kind"] == "code"
    fixes = (out / "FIXES.md").read_text()
    assert "## Weights were not carried" in fixes and "weights were not carried" in fixes
    code = (out / "model.py").read_text()
    assert '"weights.pt"' not in code and "_attach(self, 'out_drop'" not in code and "'shortcut.weight'" in code
    # The folder loads (on meta and with real weights) and runs, in a fresh process; `audit DIR` re-audits clean.
    shown = in_fresh_process(out, """
        torch.manual_seed(0)
        net, shapes = model.load_model(), model.load_model("meta")
        x = model.example_inputs()
        print(net(*x).shape, shapes(*(t.to("meta") for t in x)).shape, shapes.fc1.weight.device, net.training)
    """, tmp_path)
    assert shown.split() == ["torch.Size([4,", "4])", "torch.Size([4,", "4])", "meta", "False"]
    for again in ([], ["--meta"]):
        reaudit, _ = fixed_json(str(out), *again)
        assert reaudit["status"] == "ok" and reaudit["findings"] == []


def test_a_model_over_the_budget_is_fixed_without_its_weights_not_refused(tmp_path):
    out = tmp_path / "fixed"
    model, result = fixed_json(str(FIX / "mlp.py"), "--fix", "--out", str(out), "--max-memory", "1KB")
    assert result.exit_code == 0 and model["status"] == "ok", result.output
    assert any("exceed the 1000 B budget" in n for n in model["capture"]["notes"] if n.startswith("fix: weights were not carried"))
    assert json.loads((out / FIXED_MANIFEST).read_text())["weights_carried"] is False


def test_text_output_says_the_fix_was_checked_on_meta(tmp_path):
    result = invoke(str(FIX / "mlp.py"), "--meta", "--fix", "--out", str(tmp_path / "fixed"))
    assert result.exit_code == 0, result.output
    assert "note: weights were not carried (--meta)" in result.stdout
    assert "(loaded on meta, ran a meta forward and re-audited: nothing remains)" in result.stdout


def test_a_bias_before_batchnorm_is_only_dropped_without_weights(tmp_path):
    [result] = model_results(run(FIXTURES / "rules" / "nrm002_bias.py", select=["NRM002"], meta=True,
                                 fix=FixOptions(out=tmp_path / "fixed")))
    assert result.status == "ok", result.error
    assert [f.module for f in result.fixes] == ["conv1", "fc"] and not [f for f in result.findings if f.fixable]
    assert all("(no weights, so nothing to fold)" in f.action and not f.safe for f in result.fixes)


# --- re-inits as code ----------------------------------------------------------------------------------------


def test_reinit_fixes_are_written_as_init_code_and_drawn_as_planned(tmp_path):
    """INI001 (He), INI003 (Xavier for a constant Linear) and INI002 (orthogonal gate blocks) on meta: the written
    model draws them, so built with real weights it passes the init rules on its values."""
    out = tmp_path / "fixed"
    model, result = fixed_json(str(FIX / "inits.py"), "--meta", "--fix", "--out", str(out))
    assert result.exit_code == 0 and model["status"] == "ok", result.output
    assert sorted(f["code"] for f in model["fixes"]) == ["INI001"] * 4 + ["INI002", "INI003"]
    assert "weight std 0.001 => He normal std 0.177" in " ".join(f["action"] for f in model["fixes"])
    code = (out / "model.py").read_text()
    assert "# --fix INI002 [lstm]" in code and "('lstm.weight_hh_l0', 48, 64)" in code
    assert "# nn.init.uniform_(a=-0.25, b=0.25)" in code  # the LSTM's own init, as recorded, carried
    drawn = in_fresh_process(out, """
        torch.manual_seed(0)
        net = model.load_model()
        gates = net.lstm.weight_hh_l0.detach().chunk(4)
        print(float(net.layers[2].weight.std()), float(net.embed.weight.std()),
              max(float((g @ g.T - torch.eye(16)).abs().max()) for g in gates), float(net.layers[2].bias.abs().max()))
    """, tmp_path)
    he, embed, orthogonality, bias = map(float, drawn.split())
    assert abs(he - math.sqrt(2 / 64)) < 0.02 and embed > 0.1 and orthogonality < 1e-5 and bias == 0.0
    reaudit, _ = fixed_json(str(out))  # real weights (it fits): the values are judged
    assert reaudit["status"] == "ok" and not [f for f in reaudit["findings"] if f["code"].startswith("INI")]


OWN_PARAMETERS = """
import torch
import torch.nn as nn


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16, padding_idx=0)
        self.position = nn.Parameter(torch.randn(1, 8, 16) * 0.02)
        self.scale = nn.Parameter(torch.ones(16))
        self.register_buffer("mask", torch.tril(torch.ones(8, 8)), persistent=False)
        self.register_buffer("offset", torch.arange(16.0))
        self.proj = nn.Linear(16, 16)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(16, 4)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        self.proj.weight.data.mul_(2.0)

    def forward(self, ids):
        h = (self.embed(ids) + self.position) * self.scale + self.offset
        h = self.mask @ h
        return self.head(torch.relu(self.drop(self.proj(h))))


def example_inputs():
    return (torch.randint(1, 50, (2, 8)),)
"""


def test_the_recorded_init_and_the_buffers_are_carried(tmp_path):
    """Parameters of the user's own modules, a padding row, a chain after trunc_normal_, measured creation values
    and buffers computed in __init__: the written model draws and holds what the audited one had."""
    source = tmp_path / "tagger.py"
    source.write_text(OWN_PARAMETERS)
    out = tmp_path / "fixed"
    model, result = fixed_json(str(source), "--meta", "--fix", "--out", str(out))
    assert result.exit_code == 0 and model["status"] == "ok", result.output
    assert [f["code"] for f in model["fixes"]] == ["DRO001"]
    notes = " ".join(model["capture"]["notes"])
    assert "`position`: drawn from a normal with the mean and std of the values they were created with" in notes
    code = (out / "model.py").read_text()
    assert "[['mul_', (2.0,), {}]]" in code and "('embed.weight', 0, 1)" in code
    drawn = in_fresh_process(out, """
        torch.manual_seed(0)
        net = model.load_model()
        print(float(net.embed.weight[0].abs().max()), float(net.scale.min()), float(net.proj.weight.std()),
              float(net.position.std()), float(net.mask.sum()), float(net.offset[-1]), "mask" in net.state_dict())
    """, tmp_path)
    padding, scale, proj, position, mask, offset, persistent = drawn.split()
    assert float(padding) == 0.0 and float(scale) == 1.0 and float(mask) == 36.0 and float(offset) == 15.0
    assert abs(float(proj) - 0.04) < 0.01 and abs(float(position) - 0.02) < 0.01 and persistent == "False"


@pytest.mark.parametrize(
    "init",
    [
        lambda t: nn.init.normal_(t, 0.1, 0.5),
        lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)),
        lambda t: nn.init.xavier_normal_(t, gain=5 / 3),
        lambda t: (nn.init.trunc_normal_(t, std=0.02), t.mul_(3.0)),
        lambda t: nn.init.constant_(t, 0.25),
        lambda t: [nn.init.orthogonal_(t[i * 4:(i + 1) * 4]) for i in range(3)],
        lambda t: nn.init.eye_(t),
        lambda t: nn.init.sparse_(t, 0.5, std=0.1),
        lambda t: (nn.init.normal_(t), t[2].fill_(0.0)),
    ],
    ids=["normal", "kaiming_uniform", "xavier_normal", "trunc_normal-chain", "constant", "orthogonal-blocks", "eye",
         "sparse", "padding-row"],
)
def test_every_recorded_init_is_written_back_as_the_same_init(init):
    """The record of an init, written as INITS and drawn again, gives the statistics the init rules read."""
    weight = torch.empty(12, 6, device="meta")
    [recorded] = recorded_writes([weight], lambda: init(weight))
    table = InitTable()
    table.add("weight", recorded)
    assert not table.unwritten and table.groups
    namespace: dict = {"torch": torch, "nn": nn}
    exec(table.render() + "\n" + INITIALIZE, namespace)  # noqa: S102 - our own generated code
    holder = nn.Module()
    holder.weight = nn.Parameter(torch.empty(12, 6, device="meta"))
    [written] = recorded_writes([holder.weight], lambda: namespace["_initialize"](holder))
    assert same_init(recorded, written)
    assert [(a, b, d.kind, d.args, d.chain) for a, b, d in recorded.pieces] == [(a, b, d.kind, d.args, d.chain) for a, b, d in written.pieces]


# --- models torch.fx cannot trace, the API, fixability ----------------------------------------------------------


def test_an_untraceable_model_is_rebuilt_from_its_source_with_the_fixes_reinit(tmp_path):
    out = tmp_path / "fixed"
    model, result = fixed_json(str(FIX / "shape_branch.py"), "--meta", "--fix", "--out", str(out))
    assert result.exit_code == 0 and model["status"] == "ok", result.output
    assert {f["code"] for f in model["fixes"]} == {"NRM002", "INI003"} and model["findings"] == []
    manifest = json.loads((out / FIXED_MANIFEST).read_text())
    assert manifest["kind"] == "weights" and manifest["weights_carried"] is False
    assert "weights.pt" not in manifest["files"]
    code = (out / "model.py").read_text()
    assert "DROPPED = ['conv.bias']" in code and "'hidden.weight'" in code and "'head.weight'" not in code
    drawn = in_fresh_process(out, """
        torch.manual_seed(0)
        net = model.load_model()
        print(net.conv.bias is None, float(net.hidden.weight.std()))
    """, tmp_path)
    no_bias, hidden = drawn.split()
    assert no_bias == "True" and abs(float(hidden) - math.sqrt(2 / 8)) < 0.15


def test_the_api_fixes_a_model_handed_over_on_meta(tmp_path):
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1), nn.ReLU(), nn.Linear(8, 2))
    fixed = auditor.fix(net, torch.zeros(2, 8, device="meta"), out=tmp_path / "fixed")
    assert [f.code for f in fixed.fixes] == ["DRO001"]
    assert all(t.is_meta for t in [*fixed.model.parameters(), *fixed.model.buffers()])  # nothing materialized
    assert net[1].__class__ is nn.Dropout and list(net.state_dict()) == list(fixed.model.state_dict())  # untouched
    notes = " ".join(fixed.report.results[0].capture.notes)
    assert "no init call was recorded for it (a model handed over on meta)" in notes


@pytest.mark.parametrize("path", fix_fixtures(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_what_is_fixable_on_meta_is_fixed_on_meta(path, tmp_path):
    """As tests/test_fixability.py on real weights: a finding called fixable on meta is fixed on meta, and what
    remains is not called fixable and has a note."""
    header = fixture_header(path)
    common = {"meta": True, "inputs": header.get("input", []), "select": header.get("select", ["ALL"]),
              "capture": tuple(header.get("capture", ["fx"])[:1])}
    audited = {r.target: r for r in model_results(run(path, **common))}
    fixed = {r.target: r for r in model_results(run(path, fix=FixOptions(out=tmp_path / "out"), **common))}
    for target, before in audited.items():
        after = fixed[target]
        if before.status != "ok":  # a forward that reads values cannot run on meta: nothing to fix
            continue
        if after.status != "ok":
            assert "--fix failed" in (after.error or "") and not [f for f in before.findings if f.fixable], after.error
            continue
        fixable = Counter((f.code, f.module) for f in before.findings if f.fixable)
        left = Counter((f.code, f.module) for f in after.findings)
        unfixable = Counter((f.code, f.module) for f in before.findings if not f.fixable)
        assert all(count <= unfixable[key] for key, count in left.items()), (left, after.capture.notes)
        assert not [f for f in after.findings if f.fixable]
        notes = [n for n in after.capture.notes if "not fixed" in n or "reverted" in n]
        assert all(any(f.code in n for n in notes) for f in after.findings if f.code in FIXABLE_CODES)
        assert sum(fixable.values()) <= len(after.fixes)


# --- opt-in: a model far bigger than memory ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_20b_gpt_is_fixed_without_its_weights(tmp_path):
    """benchmarks/large/gpt_20b.py (80 GB of float32 weights): its planted DRO001 and INI001 are fixed through the
    meta path and a fresh `audit DIR` re-audits the folder clean (time and memory: benchmarks/large.py)."""
    target = f"{Path(__file__).parent.parent / 'benchmarks' / 'large' / 'gpt_20b.py'}:build_model"
    out = tmp_path / "fixed"
    done = subprocess.run([sys.executable, "-m", "auditor", target, "--fix", "--out", str(out), "--format", "json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    [model] = [r for r in json.loads(done.stdout)["results"] if r["capture"]]
    assert {"DRO001", "INI001"} <= {f["code"] for f in model["fixes"]} and model["findings"] == []
    assert "## Weights were not carried" in (out / "FIXES.md").read_text()
    assert not (out / "weights.pt").exists()
    again = subprocess.run([sys.executable, "-m", "auditor", str(out), "--format", "json"], capture_output=True, text=True, timeout=600)
    [reaudit] = [r for r in json.loads(again.stdout)["results"] if r["capture"]]
    assert reaudit["status"] == "ok" and reaudit["findings"] == []
    assert any("audited on meta" in n for n in reaudit["capture"]["notes"])


# --- opt-in: a Hugging Face config.json with a planted fault ---------------------------------------------------


@pytest.mark.zoo
def test_a_config_json_with_a_gross_init_range_is_fixed_as_code(tmp_path):
    pytest.importorskip("transformers")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024, "intermediate_size": 2048,
        "num_attention_heads": 8, "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 1000,
        "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 1.0,
    }))
    out = tmp_path / "fixed"
    [before] = model_results(run(config, meta=True))
    assert {f.code for f in before.findings} == {"INI001"} and all(f.fixable for f in before.findings)
    [after] = model_results(run(config, meta=True, fix=FixOptions(out=out)))
    assert after.status == "ok" and after.findings == [], after.error
    assert len(after.fixes) == len(before.findings)
    assert sorted(p.name for p in out.iterdir()) == ["FIXES.md", FIXED_MANIFEST, "config.json", "model.py"]
    [reaudit] = model_results(run(out, meta=True))
    assert reaudit.status == "ok" and reaudit.findings == []
