"""Finding models a repository survives: factories of any name, helpers that are no models, every candidate
accounted for (skipped with the command that audits it), files imported only when that is safe and useful."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from auditor.findings import Severity
from auditor.static.outline import Outline
from auditor.static.safety import import_hazard
from support import FIXTURES, cli, invoke, run

DISCOVERY = FIXTURES / "discovery"


def _statuses(report) -> dict[str, str]:
    return {r.target.rsplit("/", 1)[-1]: r.status for r in report.results}


# --- what a file declares --------------------------------------------------------------------------------------
def test_factories_of_any_name_are_models_and_the_classes_they_build_are_not_skipped():
    report = run(DISCOVERY / "cifar_factories.py")
    assert _statuses(report) == {"cifar_factories.py": "ok", "cifar_factories.py:ResNet18": "ok", "cifar_factories.py:resnet20": "ok"}
    # ResNet and BasicBlock need arguments but are built by the factories; ResNetWide(width) and test() are helpers.
    assert report.exit_code(Severity.WARNING) == 0


def test_outline_reads_factories_building_blocks_and_required_arguments():
    outline = Outline(ast.parse((DISCOVERY / "cifar_factories.py").read_text()))
    assert {f.name for f in outline.factories()} == {"ResNet18", "resnet20", "ResNetWide"}
    assert outline.building_blocks() >= {"BasicBlock", "ResNet"}
    assert outline.init_required("ResNet") == ["block", "num_blocks"]


def test_helpers_are_no_models_and_a_config_model_is_built_from_its_config_defaults():
    report = run(DISCOVERY / "gpt_parts.py", DISCOVERY / "helpers.py")
    statuses = _statuses(report)
    assert "gpt_parts.py:NewGELU" not in statuses and "gpt_parts.py:Block" not in statuses  # parts of GPT
    assert "helpers.py:ShuffleBlock" not in statuses and statuses["helpers.py:ShuffleNet"] == "ok"
    [gpt] = [r for r in report.results if r.target.endswith("gpt_parts.py:GPT")]
    assert gpt.status == "ok" and gpt.built == "built from its defaults (config=GPTConfig())"  # nanoGPT's GPT(config)
    assert [c.name for c in gpt.capture.classes] == ["GPT", "Block", "NewGELU"]
    reasons = {r.target.rsplit("/", 1)[-1]: r.reason for r in report.skipped}
    assert set(reasons) == {"helpers.py:GANLoss", "helpers.py:Swish", "helpers.py:criterion"}
    assert reasons["helpers.py:GANLoss"].startswith("a loss function (GANLoss), not a model")
    assert reasons["helpers.py:Swish"].startswith("has no parameters (Swish: an activation or helper)")
    assert report.exit_code(Severity.WARNING) == 0  # a clean repository stays clean: skipped is not failed


def test_the_skipped_command_audits_the_model():
    done = cli(f"{DISCOVERY / 'gpt_parts.py'}:GPT", "--kwargs", '{"config": {"n_layer": 1, "vocab_size": 40}}', "--format", "json")
    [result] = json.loads(done.stdout)["results"]
    assert done.returncode == 0 and result["status"] == "ok", done.stderr


# --- skipped results in every format ---------------------------------------------------------------------------
def test_skipped_models_are_reported_in_every_format_and_never_as_passed(tmp_path):
    model = tmp_path / "needs_args.py"
    model.write_text("import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self, tokenizer):\n"
                     "        super().__init__()\n        self.drop = nn.Dropout(0.1)\n        self.fc = nn.Linear(4, len(tokenizer))\n")
    text = cli(str(model))
    assert text.returncode == 0
    assert f"{model}:Net skipped: needs constructor arguments: tokenizer; audit it with `audit {model}:Net --kwargs '{{\"tokenizer\": ...}}'`" in text.stdout
    assert "All checks passed" not in text.stdout
    assert "No model was audited: 1 model skipped (listed above); source checks passed (1 file)." in text.stdout
    # the other formats render the same result: in this process (the command's code, without a new interpreter)
    document = json.loads(invoke(str(model), "--format", "json").stdout)
    assert document["summary"] == {"targets": 1, "error": 0, "warning": 0, "info": 0, "skipped": 1,
                                   "classes": {"defined": 1, "audited": 0, "covered": 0, "not_audited": 1}}
    skipped = document["results"][1]
    assert skipped["status"] == "skipped" and skipped["reason"].startswith("needs constructor arguments: tokenizer")
    sarif = json.loads(invoke(str(model), "--format", "sarif").stdout)
    [invocation] = sarif["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is True
    assert invocation["toolExecutionNotifications"][0]["level"] == "note"
    assert "not audited: needs constructor arguments" in invocation["toolExecutionNotifications"][0]["message"]["text"]
    github = invoke(str(model), "--format", "github").stdout
    assert github.startswith("::notice title=audit%3A not audited::") and "needs constructor arguments" in github


def test_summary_counts_skipped_next_to_audited_models():
    text = cli(str(DISCOVERY / "helpers.py")).stdout
    assert "; 3 models skipped, not audited (listed above)" in text.rstrip().splitlines()[-1]
    assert "Not audited (3):" in text


# --- importing only what is safe ---------------------------------------------------------------------------------
SAFE = {
    "imports and guards": "import torch\ntry:\n    import timm\nexcept ImportError:\n    timm = None\n__all__ = ['Net']\n",
    "classes, dataclasses, decorators": "from dataclasses import dataclass\nimport torch.nn as nn\n\n@dataclass\nclass Cfg:\n    n: int = 2\n\n"
                                        "class Net(nn.Module):\n    def __init__(self, cfg=Cfg()):\n        super().__init__()\n",
    "main guard": "import torch\n\ndef main():\n    torch.save({}, 'x.pt')\n\nif __name__ == '__main__':\n    main()\n",
    "harmless calls": "import sys, logging, warnings, torch\nsys.path.append('..')\ntorch.manual_seed(0)\nwarnings.filterwarnings('ignore')\n"
                      "logger = logging.getLogger(__name__)\nlogger.info('x')\ntorch.fx.wrap('len')\nprint('loaded')\n",
    "a table filled in a loop (timm)": "cfgs = {'a': dict(depth=2)}\nfor k in list(cfgs):\n    cfgs[k + '_wide'] = dict(cfgs[k], width=2)\n",
    "constructors and factories": "import torch.nn as nn\n\ndef _cfg(url=''):\n    return {'url': url}\n\ndefault_cfgs = {'m': _cfg()}\n"
                                  "model = nn.Sequential(nn.Linear(2, 2))\nmodel.eval()\n",
}
UNSAFE = {
    "os.remove": ("import os\nimport torch.nn as nn\nos.remove('data.bin')\n", "`os.remove(...)` at line 3"),
    "shutil.rmtree via alias": ("from shutil import rmtree as wipe\nx = wipe('out')\n", "`wipe(...)` at line 2"),
    "open().write": ("open('log.txt', 'w').write('x')\n", "`open('log.txt', 'w').write(...)` at line 1"),
    "torch.save": ("import torch\nstate = torch.save({}, 'ckpt.pt')\n", "`torch.save(...)` at line 2"),
    "parse_args": ("import argparse\nparser = argparse.ArgumentParser()\nargs = parser.parse_args()\n", "`parser.parse_args(...)` at line 3"),
    "training loop": ("import torch\nfor epoch in range(3):\n    loss = compute()\n    loss.backward()\n", "`loss.backward(...)` at line 4"),
    "main()": ("def main():\n    pass\n\nmain()\n", "`main(...)` at line 4"),
    "while": ("while True:\n    pass\n", "a `while` loop at line 1"),
    "with": ("with torch.no_grad():\n    pass\n", "a `with` block at line 1"),
    "download": ("import torchvision\nnet = torchvision.models.resnet18(weights='DEFAULT')\n", "`torchvision.models.resnet18(...)` at line 2"),
    "local function doing file work": ("def load():\n    return open('cfg.json').read()\n\ncfg = load()\n", "`load(...)`"),
    "sys.exit": ("import sys\nsys.exit(0)\n", "`sys.exit(...)` at line 2"),
}


@pytest.mark.parametrize("name", SAFE)
def test_declarations_are_safe_to_import(name):
    assert import_hazard(ast.parse(SAFE[name])) is None


@pytest.mark.parametrize("name", UNSAFE)
def test_anything_else_at_top_level_is_a_script(name):
    text, expected = UNSAFE[name]
    hazard = import_hazard(ast.parse(text))
    assert hazard is not None and expected in str(hazard), str(hazard)


def test_a_script_is_read_not_run_and_its_model_is_skipped_with_the_explicit_command(tmp_path):
    canary = tmp_path / "precious.txt"
    canary.write_text("keep me")
    model = tmp_path / "train.py"
    model.write_text(f"import os\nimport torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                     f"        self.fc = nn.Linear(4, 2)\n\n    def forward(self, x):\n        return self.fc(x)\n\n\nos.remove({str(canary)!r})\n")
    report = run(model)
    assert canary.exists()
    [source, skipped] = report.results
    assert source.status == "ok" and skipped.status == "skipped" and skipped.target.endswith("train.py:Net")
    assert skipped.reason == f"not imported: `os.remove(...)` at line 14 would run on import; `audit {model}:Net` imports it on purpose"
    explicit = run(f"{model}:Net")  # naming the model is the user's consent
    assert [r.status for r in explicit.results] == ["ok"] and not canary.exists()


def test_a_local_module_that_runs_code_blocks_the_import_of_its_users(tmp_path):
    (tmp_path / "setup_env.py").write_text("import shutil\nshutil.rmtree('outputs', ignore_errors=True)\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\nimport setup_env\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
                                     "        super().__init__()\n        self.fc = nn.Linear(2, 2)\n")
    [source, skipped] = run(tmp_path / "net.py").results
    assert skipped.status == "skipped"
    assert "`shutil.rmtree(...)` at line 2 would run on import of setup_env.py, which it imports" in skipped.reason


def test_only_files_that_reach_torch_are_imported(tmp_path):
    (tmp_path / "layers.py").write_text("import torch.nn as nn\n\n\nclass Layer(nn.Linear):\n    pass\n")
    (tmp_path / "model.py").write_text("from layers import Layer\n\nnet = Layer(3, 3)\n")  # torch only through layers.py
    (tmp_path / "util.py").write_text("MARK = []\n\n\nclass Registry:\n    pass\n")
    report = run(tmp_path)
    # Layer takes nn.Linear's arguments: built as model.py builds it
    assert _statuses(report) == {"layers.py": "ok", "layers.py:Layer": "ok", "model.py": "ok", "model.py:net": "ok", "util.py": "ok"}
    assert "util" not in sys.modules  # a plain utility module is never executed


def test_a_folder_of_plain_python_is_read_never_imported(tmp_path):
    """Torch-free modules with classes and top-level code: parsed and checked, never imported (what a folder of
    200 costs: benchmarks/discovery.py)."""
    for index in range(20):
        (tmp_path / f"util_{index}.py").write_text(f"import os\n\n\nclass Helper{index}:\n    value = {index}\n\n\n"
                                                   f"def helper(x):\n    return os.path.join(x, 'y')\n\n\nprint('imported')\n")
    report = run(tmp_path)
    assert len(report.results) == 20 and all(r.status == "ok" for r in report.results)
    assert not any(name.startswith("util_") for name in sys.modules)


def test_argument_parsing_at_import_sees_only_the_file(tmp_path):
    """An explicit target's top-level `parse_args()` must not read the audit's own options."""
    model = tmp_path / "script_model.py"
    model.write_text("import argparse\nimport torch.nn as nn\n\nparser = argparse.ArgumentParser()\nparser.add_argument('--width', type=int, default=4)\n"
                     "args = parser.parse_args()\n\n\ndef build_model():\n    return nn.Sequential(nn.Linear(args.width, 2))\n")
    done = cli(f"{model}:build_model", "--input", "2,4", "--format", "json", "--fail-on", "warning")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["status"] == "ok"


def test_explicit_script_named_in_the_message_is_exactly_what_audits_it(tmp_path):
    model = tmp_path / "loop.py"
    model.write_text("import torch.nn as nn\n\nmodel = nn.Sequential(nn.Linear(2, 2), nn.ReLU())\nfor _ in range(2):\n    model.zero_grad()\n")
    [_, skipped] = run(model).results
    command = skipped.reason.split("`audit ", 1)[1].split("`", 1)[0]
    assert command == f"{model}:model"
    assert [r.status for r in run(command).results] == ["ok"]


def test_bom_and_pep263_files_are_read_as_python_reads_them(tmp_path):
    latin = tmp_path / "latin.py"
    latin.write_bytes("# -*- coding: latin-1 -*-\n# Modèle\nimport torch.nn as nn\n\nnet = nn.Sequential(nn.Linear(2, 2))\n".encode("latin-1"))
    bom = tmp_path / "bom.py"
    bom.write_bytes(b"\xef\xbb\xbf" + "import torch.nn as nn\n\nnet = nn.Sequential(nn.Linear(2, 2))\n".encode())
    report = run(latin, bom)
    assert [r.status for r in report.results] == ["ok"] * 4, [r.error for r in report.results]


def test_a_refused_file_without_models_is_still_accounted_for(tmp_path):
    script = tmp_path / "prepare.py"
    script.write_text("import torch\nfrom net import build\n\nwith open('x') as f:\n    pass\n")
    [_, skipped] = run(script).results
    assert skipped.status == "skipped" and skipped.target == str(script)
    assert skipped.reason.startswith("not imported: a `with` block at line 4 would run on import; no model is defined in it")


def test_fixture_models_in_this_repository_are_all_imported():
    """Real model files must stay importable: every fixture model file is judged safe."""
    for path in sorted((FIXTURES).rglob("*.py")):
        parts = path.relative_to(FIXTURES).parts
        if path.name in ("syntax_error.py", "script_runs_on_import.py") or path.parent.name == "isolation" or "repos" in parts or "guard" in parts:
            continue  # (isolation/: models that print, exit or hang at import on purpose, audited as file.py:NAME;
            # repos/: repositories with scripts; guard/: side effects the guard must refuse, hidden from this check)
        assert import_hazard(ast.parse(Path(path).read_text())) is None, path


def test_an_unknown_coding_line_is_a_clear_read_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("# -*- coding: nonsense -*-\nimport torch\n")
    [result] = run(bad).results
    assert result.status == "error" and result.error == f"{bad}: cannot be read: unknown encoding for '{bad}': nonsense"


@pytest.mark.zoo
@pytest.mark.parametrize("package", ["torchvision.models", "timm.models", "transformers.models.llama", "transformers.models.bert"])
def test_library_model_files_are_safe_to_import(package):
    """torchvision-, timm- and Hugging Face-style model files (registries, config tables filled in loops,
    decorators) only declare things."""
    import importlib.util

    spec = importlib.util.find_spec(package.split(".")[0])
    if spec is None:
        pytest.skip(f"{package} is not installed")
    root = Path(spec.submodule_search_locations[0]).joinpath(*package.split(".")[1:])
    unsafe = {}
    for path in sorted(root.glob("*.py")):
        hazard = import_hazard(ast.parse(path.read_text(encoding="utf-8")))
        if hazard is not None:
            unsafe[path.name] = str(hazard)
    assert unsafe == {}
