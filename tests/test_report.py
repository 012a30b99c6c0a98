"""The machine formats: the contract's JSON, SARIF 2.1.0 as GitHub code scanning reads it, GitHub annotations,
and the text report."""

from __future__ import annotations

import io
import json

from rich.console import Console

from auditor.findings import AppliedFix, CaptureInfo, Finding, InputRecord, Report, Severity, TargetResult
from auditor.report import renderer
from auditor.report.text import print_report
from auditor.rule import all_rules

FINDING = Finding(
    code="DRO001", rule="dropout-before-activation", severity=Severity.WARNING,
    message="Dropout `head.drop` feeds ReLU `head.act`; apply dropout after the activation",
    module="head.drop", node="head_drop", file="models/net.py", line=14, fixable=True, hint="Move the dropout after the activation",
)
ROOT_FINDING = Finding(code="RES001", rule="residual-shape-mismatch", severity=Severity.ERROR, message="100% bad: a, b\nnext", module="", node="add", file="models/net.py", line=30)
GUESSED = InputRecord("idx", "int64:2,32", "from Embedding(1000, 64) and pos_emb[32]", guessed=True)
UNLOCATED = Finding(code="NRM001", rule="batchnorm-after-activation", severity=Severity.INFO, message="m", module=None)


def report() -> Report:
    return Report([
        TargetResult("models/net.py:Net", capture=CaptureInfo("fx", 57, inputs=[GUESSED]), findings=[FINDING, ROOT_FINDING], fixes=[AppliedFix("DRO001", "head.drop", "moved after head.act")]),
        TargetResult("models/net.py", findings=[UNLOCATED]),
        TargetResult("models/broken.py", status="error", error="models/broken.py:3: syntax error: invalid syntax"),
    ])


def test_json_has_every_contract_field():
    document = json.loads(renderer("json")(report()))
    assert document["version"] == 1 and document["tool"] == {"name": "auditor", "version": "0.1.0"}
    first = document["results"][0]
    assert first["target"] == "models/net.py:Net" and first["status"] == "ok"
    assert first["capture"] == {"method": "fx", "nodes": 57, "notes": [], "inputs": [
        {"name": "idx", "spec": "int64:2,32", "guessed": True, "source": "from Embedding(1000, 64) and pos_emb[32]"}], "classes": []}
    assert first["findings"][0] == {
        "code": "DRO001", "rule": "dropout-before-activation", "severity": "warning",
        "message": "Dropout `head.drop` feeds ReLU `head.act`; apply dropout after the activation",
        "module": "head.drop", "node": "head_drop", "file": "models/net.py", "line": 14, "fixable": True,
    }
    assert first["fixes"] == [{"code": "DRO001", "module": "head.drop", "action": "moved after head.act", "safe": False}]
    assert first["probes"] == {}
    failed = document["results"][2]
    assert failed["status"] == "error" and failed["error"].startswith("models/broken.py:3")
    assert document["summary"] == {"targets": 3, "error": 1, "warning": 1, "info": 1, "skipped": 0,
                                   "classes": {"defined": 0, "audited": 0, "covered": 0, "not_audited": 0}}


def test_sarif_is_structurally_what_github_code_scanning_reads():
    document = json.loads(renderer("sarif")(report()))
    assert document["version"] == "2.1.0" and document["$schema"].endswith("sarif-2.1.0.json")
    [run] = document["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "auditor" and driver["version"] == "0.1.0"
    ids = [r["id"] for r in driver["rules"]]
    assert ids == sorted(r.code for r in all_rules())
    for descriptor in driver["rules"]:
        assert descriptor["shortDescription"]["text"] and descriptor["fullDescription"]["text"] and descriptor["help"]["text"]
        assert descriptor["defaultConfiguration"]["level"] in ("error", "warning", "note")
    levels = [r["level"] for r in run["results"]]
    assert levels == ["warning", "error", "note"]
    for result in run["results"]:
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["message"]["text"]
        [location] = result["locations"]
        physical = location["physicalLocation"]
        assert not physical["artifactLocation"]["uri"].startswith("/")
        assert physical["region"]["startLine"] >= 1
    assert run["results"][0]["locations"][0]["logicalLocations"] == [{"fullyQualifiedName": "head.drop", "kind": "module"}]
    assert run["results"][2]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "models/net.py"
    assert run["invocations"][0]["executionSuccessful"] is False


def test_github_annotations_escape_data_and_properties():
    lines = renderer("github")(report()).splitlines()
    assert lines[0] == "::warning file=models/net.py,line=14,title=DRO001 dropout-before-activation::" + FINDING.message + " [head.drop]"
    assert lines[1] == "::error file=models/net.py,line=30,title=RES001 residual-shape-mismatch::100%25 bad: a, b%0Anext [<root>]"
    assert lines[2] == "::notice title=NRM001 batchnorm-after-activation::m"
    assert lines[3].startswith("::error title=audit::models/broken.py: models/broken.py:3")


def test_text_report_groups_by_target_with_locations_and_summary():
    buffer = io.StringIO()
    print_report(report(), Console(file=buffer, no_color=True, width=200, soft_wrap=True))
    text = buffer.getvalue()
    assert "models/net.py:Net  fx, 57 nodes" in text
    error_at = text.index("models/net.py:30 error RES001 [<root>]")
    assert error_at < text.index("models/net.py:14 warning DRO001 [head.drop] Dropout `head.drop` feeds ReLU")
    assert "help: Move the dropout after the activation (fixable with --fix)" in text
    assert text.rstrip().endswith("Found 1 error, 1 warning, 1 info in 3 targets (1 target failed); 1 fixable with `audit --fix`.")


def test_text_report_for_a_clean_run():
    buffer = io.StringIO()
    print_report(Report([TargetResult("a.py"), TargetResult("a.py:Net", capture=CaptureInfo("fx", 3))]), Console(file=buffer, no_color=True, width=200))
    assert buffer.getvalue().strip() == "All checks passed! (2 targets audited)"


def test_a_guessed_input_is_shown_without_verbose_even_on_a_clean_model():
    guessed = CaptureInfo("fx", 3, notes=["guess: RES001 at m.py:9 not reported: the guessed input does not fit `pos_emb` [1, 32, 64]"],
                          inputs=[GUESSED, InputRecord("t", "int64:2", "as a timestep (one value per sample)", guessed=True)])
    given = CaptureInfo("fx", 3, inputs=[InputRecord("x", "2,3", "--input")])
    buffer = io.StringIO()
    print_report(Report([TargetResult("m.py:GPT", capture=guessed), TargetResult("m.py:Net", capture=given)]),
                 Console(file=buffer, no_color=True, width=200, soft_wrap=True))
    assert buffer.getvalue().strip().splitlines() == [
        "m.py:GPT  fx, 3 nodes",
        "  input guessed: idx long 2x32 from Embedding(1000, 64) and pos_emb[32]; t long 2 as a timestep (one value per sample)",
        "  note: RES001 at m.py:9 not reported: the guessed input does not fit `pos_emb` [1, 32, 64]",
        "",
        "All checks passed! (2 targets audited)",
    ]
    quiet = io.StringIO()
    print_report(Report([TargetResult("m.py:GPT", capture=guessed)]), Console(file=quiet, no_color=True, width=200), quiet=True)
    assert quiet.getvalue() == ""


def test_text_report_says_when_no_model_was_found_or_audited():
    buffer = io.StringIO()
    print_report(Report([TargetResult("a.py"), TargetResult("b.py")]), Console(file=buffer, no_color=True, width=200))
    assert buffer.getvalue().strip() == "All checks passed! (2 files checked; no model found)"
    skipped = TargetResult("a.py:Net", status="skipped", reason="needs constructor arguments: depth; audit it with `audit a.py:Net --kwargs '{\"depth\": ...}'`")
    buffer = io.StringIO()
    print_report(Report([TargetResult("a.py"), skipped]), Console(file=buffer, no_color=True, width=200))
    assert buffer.getvalue().strip().splitlines() == [
        "Not audited (1):",
        "  a.py:Net skipped: needs constructor arguments: depth; audit it with `audit a.py:Net --kwargs '{\"depth\": ...}'`",
        "",
        "No model was audited: 1 model skipped (listed above); source checks passed (1 file).",
    ]


def test_findings_of_one_rule_on_one_line_are_shown_once_for_people():
    """Layers built in a loop share a creation line: text and GitHub show it once and name the other modules;
    JSON keeps every finding."""
    from dataclasses import replace

    looped = [replace(FINDING, module=f"blocks.{i}.drop", node=f"n{i}") for i in range(6)]
    grouped = Report([TargetResult("net.py:Net", findings=looped)])
    buffer = io.StringIO()
    print_report(grouped, Console(file=buffer, no_color=True, width=200, soft_wrap=True))
    text = buffer.getvalue()
    assert text.count("warning DRO001") == 1
    assert "5 more at this line: `blocks.1.drop`, `blocks.2.drop`, `blocks.3.drop`, `blocks.4.drop`, ... (1 more)" in text
    assert len(renderer("github")(grouped).splitlines()) == 1
    assert len(json.loads(renderer("json")(grouped))["results"][0]["findings"]) == 6


def _text(report: Report) -> str:
    buffer = io.StringIO()
    print_report(report, Console(file=buffer, no_color=True, width=200, soft_wrap=True))
    return buffer.getvalue()


def test_repeated_infos_of_one_rule_read_as_one_per_model():
    """152 NRM002 infos of one model are one entry for people, naming a few; JSON keeps all 152."""
    from dataclasses import replace

    info = Finding(code="NRM002", rule="bias-before-batchnorm", severity=Severity.INFO, message="Conv2d `c` has a bias", module="c", node="c", file="net.py", line=3)
    infos = [replace(info, module=f"cells.{i}.conv", node=f"n{i}", line=10 + i) for i in range(152)]
    report = Report([TargetResult("net.py:NASNet", findings=infos), TargetResult("other.py:Net", findings=infos[:2])])
    text = _text(report)
    assert text.count("info NRM002") == 2  # once per model
    assert "151 more NRM002 findings in this model: `cells.1.conv`, `cells.2.conv`, `cells.3.conv`, `cells.4.conv`, ... (147 more)" in text
    assert "1 more NRM002 findings in this model: `cells.1.conv`" in text
    assert text.rstrip().endswith("Found 0 errors, 0 warnings, 154 info in 2 targets.")
    assert len(renderer("github")(report).splitlines()) == 2
    assert len(json.loads(renderer("json")(report))["results"][0]["findings"]) == 152
    assert len(json.loads(renderer("sarif")(report))["runs"][0]["results"]) == 154


def test_findings_of_one_rule_along_one_chain_read_as_one():
    """INI001 on the Linear layers of one MLP (each on its own line) is one entry naming the layers; a finding of
    another cause, or on another chain, stays separate."""
    import torch
    import torch.nn as nn

    import auditor

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(32, 32)
            self.fc2 = nn.Linear(32, 32)
            self.fc3 = nn.Linear(32, 32)
            self.fc4 = nn.Linear(32, 32)
            self.side = nn.Linear(32, 32)
            self.out = nn.Linear(64, 2)
            for layer in (self.fc1, self.fc2, self.fc3, self.side):
                nn.init.normal_(layer.weight, std=0.01)
            nn.init.kaiming_normal_(self.fc4.weight, nonlinearity="relu")

        def forward(self, x):
            h = torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x))))))
            return self.out(torch.cat([torch.relu(self.fc4(h)), torch.relu(self.side(x))], 1))

    report = auditor.audit(MLP(), (torch.randn(2, 32),), select=["INI001"])
    modules = sorted(f.module for f in report.findings)
    assert modules == ["fc1", "fc2", "fc3", "side"]
    groups = {f.module: f.group for f in report.findings}
    assert groups["fc1"] == groups["fc2"] == groups["fc3"] is not None and groups["side"] is None
    text = _text(report)
    assert text.count("warning INI001") == 2
    assert "2 more along this chain of layers: `fc2`, `fc3`" in text
    assert all("group" not in f for f in json.loads(renderer("json")(report))["results"][0]["findings"])


def test_a_chain_of_findings_with_different_causes_is_not_merged():
    from dataclasses import replace

    small = replace(FINDING, code="INI001", message="Linear `a` has weight std 0.01, 0.04x He", module="a", node="a", line=5, group="INI001:0")
    large = replace(small, message="Linear `b` has weight std 3.2, 12x He (gross)", module="b", node="b", line=6)
    same = replace(small, message="Linear `c` has weight std 0.02, 0.08x He", module="c", node="c", line=7)
    text = _text(Report([TargetResult("net.py:MLP", findings=[small, large, same])]))
    assert text.count("warning INI001") == 2 and "1 more along this chain of layers: `c`" in text


def test_graph_chains_follow_the_dataflow():
    from auditor.graph import AuditGraph, Node

    x = Node("x", "input", "input", "x")
    a, b, c, d = (Node(n, "module", "linear", "nn.Linear", module=n) for n in "abcd")
    relu = Node("relu", "call", "relu", "F.relu")
    a.inputs, relu.inputs, b.inputs, c.inputs, d.inputs = [x], [a], [relu], [b], [x]
    graph = AuditGraph([x, a, relu, b, c, d], method="fx")
    graph.link()
    assert graph.chains([a, b, c, d]) == [[a, b, c], [d]]
    assert graph.chains([c, a]) == [[a, c]]  # linked through b, which is not a member


def test_the_same_fix_in_many_modules_is_listed_once_for_people():
    """`--fix` on a 70B config re-initializes hundreds of projections: text lists each kind of change once and
    names the other modules (as findings at one line); a different change, or one as safe where the other is
    not, has its own line; JSON keeps every fix."""
    reinits = [AppliedFix("INI001", f"layers.{i}.mlp.up_proj", f"re-initialized `layers.{i}.mlp.up_proj.weight` with normal(0, {0.01 + i / 1000:.3f})")
               for i in range(80)]
    others = [AppliedFix("DRO002", "drop", "Dropout -> Linear => Linear -> Dropout"),
              AppliedFix("INI001", "head", "re-initialized `head.weight` with normal(0, 0.02)", safe=True)]
    report = Report([TargetResult("config.json", capture=CaptureInfo("export", 9000), fixes=reinits + others)])
    text = _text(report)
    assert text.count("fixed INI001") == 2 and text.count("fixed DRO002") == 1
    assert "fixed INI001 [layers.0.mlp.up_proj] re-initialized `layers.0.mlp.up_proj.weight` with normal(0, 0.010) (changes behaviour)" in text
    assert "79 more alike: `layers.1.mlp.up_proj`, `layers.2.mlp.up_proj`, `layers.3.mlp.up_proj`, `layers.4.mlp.up_proj`, ... (75 more)" in text
    assert len(json.loads(renderer("json")(report))["results"][0]["fixes"]) == 82
