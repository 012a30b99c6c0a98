"""Loading targets: discovery in a file, explicit members, and each error a user will hit."""

from __future__ import annotations

import re

import pytest

from auditor.errors import TargetError
from auditor.loading.models import BuildFailure, LoadedModel, ModelLoader, Skipped
from auditor.targets import Kind, parse_target
from support import FIXTURES, model_results, run

MODELS = FIXTURES / "models"


def load(text: str, **kwargs):
    [target] = parse_target(text)
    target.kwargs = kwargs
    return ModelLoader().load(target)


def test_discovery_finds_instances_factories_and_top_level_classes_only():
    found = load(str(MODELS / "discovery.py"))
    # Block is used inside Net: audited as part of it. Wide needs an argument: built with a conventional guess.
    assert [m.label.split(":")[1] for m in found if isinstance(m, LoadedModel)] == ["Net", "Wide", "build_model", "tiny"]
    [wide] = [m for m in found if m.label.endswith(":Wide")]
    assert wide.built == "built with guessed arguments: width=64" and wide.model.fc.in_features == 64
    assert not [m for m in found if isinstance(m, Skipped)]


def test_creation_sites_are_exact_for_loops_and_module_list_append():
    [net] = [m for m in load(str(MODELS / "discovery.py")) if m.label.endswith(":Net")]
    path = "tests/fixtures/models/discovery.py"
    assert net.sites["blocks.0"][1] == net.sites["blocks.1"][1] == 19  # the append line inside the loop
    assert net.sites["blocks.0.fc"] == (net.sites["blocks.0.fc"][0], 8)
    assert net.sites["head"][1] == 20
    assert all(site[0].endswith(path) for site in net.sites.values())


def test_member_target_builds_class_with_kwargs():
    [loaded] = load(f"{MODELS / 'needs_args.py'}:Net", depth=3)
    assert len(loaded.model.layers) == 3


def test_constructor_needing_arguments_names_them():
    with pytest.raises(TargetError, match=r"Net\(\) needs arguments depth; pass them with --kwargs '\{\"depth\": \.\.\.\}'"):
        load(f"{MODELS / 'needs_args.py'}:Net")


def test_unknown_name_lists_the_models_there():
    with pytest.raises(TargetError, match=r"no name 'Missing'.*models here: Block, Net, Wide, build_model, tiny"):
        load(f"{MODELS / 'discovery.py'}:Missing")


def test_syntax_error_names_file_and_line():
    with pytest.raises(TargetError, match=r"syntax_error.py:3: syntax error"):
        load(f"{MODELS / 'syntax_error.py'}:Net")


def test_import_error_names_file_and_line():
    [failure, *_] = load(str(MODELS / "import_error.py"))
    assert isinstance(failure, BuildFailure)
    assert re.search(r"import_error.py:2: ImportError while importing: cannot import name 'not_a_real_name_xyz' from 'torch'", str(failure.error))


def test_constructor_failure_names_the_line():
    [failure] = load(str(MODELS / "build_error.py"))
    assert isinstance(failure, BuildFailure) and failure.label.endswith("build_error.py:Net")
    assert re.search(r"build_error.py:8: building Net failed: ValueError: bad config", str(failure.error))


def test_missing_file_and_unknown_module():
    with pytest.raises(TargetError, match="no such file or directory"):
        parse_target("does/not/exist.py")
    with pytest.raises(TargetError, match="no module named 'nonexistent_pkg'"):
        load("nonexistent_pkg.models:Net")


def test_dotted_module_target(tmp_path, monkeypatch):
    package = tmp_path / "zoo_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("import torch.nn as nn\n\ndef resnetish(width=4):\n    return nn.Sequential(nn.Linear(width, width), nn.ReLU())\n")
    monkeypatch.chdir(tmp_path)
    [loaded] = load("zoo_pkg.nets:resnetish", width=6)
    assert loaded.label == "zoo_pkg.nets:resnetish"
    assert loaded.model[0].in_features == 6


def test_pickle_is_refused_without_trust(tmp_path):
    import torch

    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    [target] = parse_target(str(path))
    assert target.kind is Kind.PICKLE
    with pytest.raises(TargetError, match="refusing to unpickle: loading a pickle runs any code it contains; pass --trust-pickle"):
        ModelLoader().load(target)
    [loaded] = ModelLoader(trust_pickle=True).load(target)
    assert isinstance(loaded.model, torch.nn.Linear)


def test_state_dict_pickle_is_explained(tmp_path):
    import torch

    path = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    [target] = parse_target(str(path))
    with pytest.raises(TargetError, match="holds a state_dict"):
        ModelLoader(trust_pickle=True).load(target)


def test_failed_targets_do_not_stop_the_others():
    report = run(MODELS / "build_error.py", MODELS / "discovery.py", MODELS / "syntax_error.py")
    statuses = {r.target.rsplit("/", 1)[-1]: r.status for r in report.results}
    assert statuses["build_error.py:Net"] == "error"
    assert statuses["syntax_error.py"] == "error"
    assert statuses["discovery.py:Net"] == statuses["discovery.py:tiny"] == "ok"
    assert report.exit_code(fail_on=__import__("auditor.findings").findings.Severity.ERROR) == 2


def test_file_without_models_is_not_imported():
    report = run(MODELS / "no_models.py")
    assert [r.target for r in report.results] == ["tests/fixtures/models/no_models.py"]
    assert "no_models" not in __import__("sys").modules


def test_forward_failure_says_where_and_with_which_inputs():
    [result] = model_results(run(MODELS / "forward_error.py"))
    assert result.status == "error"
    assert result.error.startswith("forward failed with input example_inputs(): `nn.Linear` in `fc` (tests/fixtures/models/forward_error.py:9)")
    assert "mat1 and mat2 shapes cannot be multiplied" in result.error


def test_the_api_places_a_reassigned_attribute_where_the_command_line_does(monkeypatch):
    """`self.body` and `self.head` are each assigned twice: the command line watches the build, the API reads
    the source, and both name the assignment that made the module the model holds."""
    import importlib.util
    import sys

    import torch

    import auditor

    path = MODELS / "reassigned.py"
    [cli_result] = model_results(run(f"{path}:Net", inputs=["2,8"], select=["DRO001"]))
    spec = importlib.util.spec_from_file_location("reassigned_fixture", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    api_report = auditor.audit(module.Net(), torch.randn(2, 8), select=["DRO001"])
    assert [(f.code, f.module, f.line) for f in cli_result.findings] == [("DRO001", "body.1", 11)]
    assert [(f.code, f.module, f.line) for f in api_report.findings] == [("DRO001", "body.1", 11)]
    [net] = load(f"{path}:Net")
    sites = auditor.api.live_model(module.Net(), None).sites
    assert sites["head"][1] == net.sites["head"][1] == 12
