"""Auditing the models a repository has with no arguments: constructor arguments read from the repository's own
calls (scripts, argparse defaults, config files, dataclass configs, factories, constants), guesses marked as such,
wrappers built around the repository's models, models in notebooks and in folders without `__init__.py`, and
every nn.Module class accounted for once: audited, covered inside an audited model, or not audited with why.

The repositories are tiny fixtures in tests/fixtures/repos, one per style (a requirements.txt marks each root)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from auditor.static.plan import Planner
from auditor.static.project import Project
from auditor.static.repository import Repository
from auditor.static.values import Call, tensor_spec
from support import FIXTURES, cli, invoke, run

REPOS = FIXTURES / "repos"


def plan(repo: str, file: str):
    root = REPOS / repo
    return Planner(Repository(root, Project())).file_plan(root / file)


def results(report) -> dict[str, object]:
    return {r.target.split("repos/", 1)[-1]: r for r in report.results}


def classes(result) -> list[str]:
    return [c.name for c in result.capture.classes]


# --- constructor arguments from the repository itself ----------------------------------------------------------
def test_a_training_scripts_call_and_its_argparse_defaults_build_the_model():
    """`model = Net(num_classes=10, hidden=args.hidden)` with `--hidden` defaulting to 32, in a script never run."""
    entry = plan("classifier", "models.py").classes["Net"]
    assert dict(entry.build.kwargs) == {"num_classes": 10, "hidden": 32}
    assert entry.build.source.endswith("classifier/train.py:14") and not entry.build.guessed
    report = run(REPOS / "classifier")
    net = results(report)["classifier/models.py:Net"]
    assert net.status == "ok" and net.built == "built as in tests/fixtures/repos/classifier/train.py:14"


def test_the_training_loops_batch_is_the_forward_call_inputs_read():
    [call] = plan("classifier", "models.py").classes["Net"].forward_calls
    assert call.line == 18 and [a.text for a in call.args] == ["images"]
    assert call.args[0].bound == "for (images, labels) in loader:"


def test_a_package_imported_by_name_and_its_parts_are_covered():
    """`from unet import UNet` (re-exported by unet/__init__.py), built under the main guard; its parts, in
    another file, are covered by it, not skipped."""
    assert dict(plan("unet", "unet/model.py").classes["UNet"].build.kwargs) == {"n_channels": 3, "n_classes": 2}
    report = run(REPOS / "unet")
    found = results(report)
    assert found["unet/unet/model.py:UNet"].status == "ok"
    assert classes(found["unet/unet/model.py:UNet"]) == ["UNet", "DoubleConv", "Up"]
    assert not [r for r in report.results if r.status == "skipped"]  # parts.py's blocks: dropped once covered
    assert report.classes() == {"defined": 3, "audited": 1, "covered": 2, "not_audited": 0}


def test_a_dataclass_config_from_script_constants_and_a_dict():
    """nanoGPT's train.py: module constants into `dict(...)`, a key set from a value a pickle may replace."""
    build = plan("gpt", "model.py").classes["GPT"].build
    [(name, config)] = build.kwargs
    assert name == "config" and isinstance(config, Call) and config.func.name == "GPTConfig"
    assert config.keywords() == {"n_layer": 2, "n_embd": 32, "block_size": 16, "vocab_size": 96}
    gpt = results(run(REPOS / "gpt"))["gpt/model.py:GPT"]
    assert gpt.status == "ok" and classes(gpt) == ["GPT", "Block"]


def test_a_factory_that_needs_an_argument_is_built_as_the_repository_calls_it():
    report = run(REPOS / "factory")
    found = results(report)
    assert found["factory/resnet.py:build"].status == "ok" and found["factory/resnet.py:build"].built.endswith("factory/main.py:5")
    assert classes(found["factory/resnet.py:build"]) == ["ResNet", "BasicBlock"]
    assert report.classes() == {"defined": 2, "audited": 1, "covered": 1, "not_audited": 0}


def test_a_yaml_config_the_script_reads_by_a_literal_path():
    assert dict(plan("yaml_config", "net.py").classes["MLP"].build.kwargs) == {"in_dim": 12, "hidden": 24, "n_classes": 3}


def test_constants_imported_from_another_module_and_the_forward_input_they_make():
    entry = plan("rl", "policy.py").classes["Policy"]
    assert dict(entry.build.kwargs) == {"obs_dim": 8, "act_dim": 4, "hidden": 32}
    [call] = entry.forward_calls
    assert tensor_spec(call.args[0].value) == "1,8" and call.args[0].bound == "obs = torch.zeros(1, config.OBS_DIM)"


def test_values_the_data_decides_are_guessed_and_said_so():
    """`GCN(nfeat=features.shape[1], nhid=args.hidden, nclass=labels.max().item() + 1, ...)`."""
    build = plan("gcn", "models.py").classes["GCN"].build
    assert dict(build.kwargs) == {"nfeat": 64, "nhid": 16, "nclass": 10, "dropout": 0.5}
    assert build.guessed == ("nfeat=64", "nclass=10")
    assert build.source.endswith("gcn/train.py:13; guessed nfeat=64, nclass=10")



def test_a_padding_index_the_vocabulary_decides_is_guessed(tmp_path):
    """`Decoder(len(TRG.vocab), 32, TRG.vocab.stoi[TRG.pad_token])`: both come from the data, both are guessed."""
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\n\nclass Decoder(nn.Module):\n"
                                     "    def __init__(self, output_dim, emb_dim, trg_pad_idx):\n        super().__init__()\n"
                                     "        self.emb = nn.Embedding(output_dim, emb_dim, padding_idx=trg_pad_idx)\n"
                                     "        self.out = nn.Linear(emb_dim, output_dim)\n\n    def forward(self, trg):\n        return self.out(self.emb(trg))\n")
    (tmp_path / "train.py").write_text("from net import Decoder\nfrom data import TRG\n\nmodel = Decoder(len(TRG.vocab), 32, TRG.vocab.stoi[TRG.pad_token])\n")
    decoder = {r.target.rsplit("/", 1)[-1]: r for r in run(tmp_path).results}["net.py:Decoder"]
    assert decoder.status == "ok"
    assert decoder.built == f"built as in {tmp_path}/train.py:4; guessed output_dim=64, trg_pad_idx=1"


def test_a_wrappers_call_site_beats_a_model_guessed_for_it(tmp_path):
    """`Seq2Seq(enc, dec)` with enc and dec built from vocabulary sizes the data decides: three sizes guessed
    in the repository's own parts say more than two whole models guessed for `encoder` and `decoder`."""
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n\n\nclass Encoder(nn.Module):\n    def __init__(self, input_dim, emb_dim):\n        super().__init__()\n"
        "        self.emb = nn.Embedding(input_dim, emb_dim)\n\n    def forward(self, src):\n        return self.emb(src)\n\n\n"
        "class Decoder(nn.Module):\n    def __init__(self, output_dim, emb_dim, trg_pad_idx):\n        super().__init__()\n"
        "        self.emb = nn.Embedding(output_dim, emb_dim, padding_idx=trg_pad_idx)\n        self.out = nn.Linear(emb_dim, output_dim)\n\n"
        "    def forward(self, trg, memory):\n        return self.out(self.emb(trg) + memory.mean(1, keepdim=True))\n\n\n"
        "class Seq2Seq(nn.Module):\n    def __init__(self, encoder, decoder):\n        super().__init__()\n"
        "        self.encoder = encoder\n        self.decoder = decoder\n\n"
        "    def forward(self, src, trg):\n        return self.decoder(trg, self.encoder(src))\n")
    (tmp_path / "train.py").write_text("from net import Decoder, Encoder, Seq2Seq\nfrom data import SRC, TRG\n\n"
                                       "enc = Encoder(len(SRC.vocab), 32)\ndec = Decoder(len(TRG.vocab), 32, TRG.vocab.stoi[TRG.pad_token])\n"
                                       "model = Seq2Seq(enc, dec)\n")
    build = Planner(Repository(tmp_path, Project())).file_plan(tmp_path / "net.py").classes["Seq2Seq"].build
    assert build.source == (f"built as in {tmp_path}/train.py:6; guessed input_dim=64 (Encoder), output_dim=64 (Decoder), "
                            "trg_pad_idx=1 (Decoder)")

# --- wrappers, guesses, what cannot be built -------------------------------------------------------------------
def test_wrappers_are_built_around_a_model_of_the_repository():
    report = run(REPOS / "wrapper")
    found = results(report)
    assert found["wrapper/models.py:Classifier"].built.endswith("wrapper/train.py:3")  # its call passes Backbone(width=8)
    ema = found["wrapper/models.py:EMA"]
    assert ema.status == "ok" and ema.built == "built with guessed arguments: model=Backbone(width=8)"
    assert classes(ema) == ["EMA", "Backbone"]
    text = cli(str(REPOS / "wrapper")).stdout
    assert "built with guessed arguments: model=Backbone(width=8)" in text  # a guess is visible without -v


def test_a_module_argument_nothing_can_fill_is_never_hinted_as_json(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "wrap.py").write_text("import torch.nn as nn\n\n\nclass Frozen(nn.Module):\n    def __init__(self, model):\n"
                                      "        super().__init__()\n        self.model = model.eval()\n\n    def forward(self, x):\n"
                                      "        return self.model(x)\n")
    [_, skipped] = run(tmp_path).results
    assert skipped.status == "skipped" and '"model"' not in skipped.reason
    assert "takes a module, which --kwargs cannot give" in skipped.reason and "def build(): return Frozen(...)" in skipped.reason


def test_defaults_of_none_that_crash_need_arguments_and_are_no_failure(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self, layers=None):\n"
                                     "        super().__init__()\n        self.body = nn.Sequential(*[nn.Linear(n, n) for n in layers])\n")
    report = run(tmp_path)
    [_, skipped] = report.results
    assert skipped.status == "skipped" and skipped.reason.startswith("needs constructor arguments: layers")
    assert report.exit_code(fail_on=3) == 0


def test_a_constructor_that_would_download_is_not_built_during_discovery(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\nimport torch.hub\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
                                     "        super().__init__()\n        self.fc = nn.Linear(2, 2)\n"
                                     "        self.load_state_dict(torch.hub.load_state_dict_from_url('https://example.com/w.pt'))\n")
    [_, skipped] = run(tmp_path).results
    assert skipped.status == "skipped"
    assert skipped.reason.startswith("not built: its constructor would run `torch.hub.load_state_dict_from_url(...)` at line 9")



def test_a_constructor_that_reads_its_config_file_is_built(tmp_path):
    """Reading a text config (`json.load(open(...))`) is what building the model it describes takes; writing one is not."""
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "widths.json").write_text('{"hidden": 8}')
    (tmp_path / "net.py").write_text("import json\nfrom pathlib import Path\n\nimport torch.nn as nn\n\n\nclass Net(nn.Module):\n"
                                     "    def __init__(self):\n        super().__init__()\n"
                                     "        hidden = json.load(open(Path(__file__).parent / 'widths.json'))['hidden']\n"
                                     "        self.fc = nn.Linear(4, hidden)\n\n    def forward(self, x):\n        return self.fc(x)\n\n\n"
                                     "class Logged(Net):\n    def __init__(self):\n        super().__init__()\n"
                                     "        open(Path(__file__).parent / 'log.txt', 'w').write('built')\n")
    found = {r.target.rsplit("/", 1)[-1]: r for r in run(tmp_path).results}
    assert found["net.py:Net"].status == "ok"
    logged = found["net.py:Logged"]
    assert logged.status == "skipped" and logged.reason.startswith("not built: its constructor would run `open(") and "(...)` at line 20" in logged.reason
    assert not (tmp_path / "log.txt").exists()


def test_the_repositorys_call_of_a_model_is_where_its_input_guess_starts(tmp_path):
    """`model(torch.randn(2, 3, 20, 20))` in train.py: the audit feeds what the repository feeds, and says so."""
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                                     "        self.conv = nn.Conv2d(3, 8, 3)\n        self.act = nn.ReLU()\n\n"
                                     "    def forward(self, x):\n        return self.act(self.conv(x))\n")
    (tmp_path / "train.py").write_text("import torch\nfrom net import Net\n\nmodel = Net()\nloss = model(torch.randn(2, 3, 20, 20)).mean()\n")
    net = {r.target.rsplit("/", 1)[-1]: r for r in run(tmp_path).results}["net.py:Net"]
    [record] = net.capture.inputs
    assert (record.name, record.spec, record.source) == ("x", "2,3,20,20", f"as {tmp_path}/train.py:5 makes it")

def test_a_plain_value_the_repositorys_call_passes_reaches_the_forward_as_it_is(monkeypatch):
    """`model(src, trg, 0, mode="greedy")` in train.py: the teacher-forcing ratio is the int 0 and the mode the
    string (a tensor ratio fails `random.random() < ratio`); `length_scale`, left out, keeps its default 1.0
    (the forward asserts the types). The instance train.py builds is fed the same way."""
    for name in ("model", "train"):  # another fixture's model.py or train.py, imported in-process by an earlier
        monkeypatch.delitem(sys.modules, name, raising=False)  # test in this worker, must not answer `from model import`
    report = run(REPOS / "seq2seq")
    found = results(report)
    for target in ("seq2seq/model.py:Seq2Seq", "seq2seq/train.py:model"):
        result = found[target]
        assert result.status == "ok", result.error
        records = {r.name: (r.spec, r.source) for r in result.capture.inputs}
        site = "as tests/fixtures/repos/seq2seq/train.py:10"
        assert records == {"src": ("int64:7,4", f"{site} makes it"), "trg": ("int64:9,4", f"{site} makes it"),
                           "teacher_forcing_ratio": ("=0", f"{site} passes it"), "length_scale": ("=1.0", "left at its default"),
                           "mode": ("='greedy'", f"{site} passes it")}
    shown = cli(str(REPOS / "seq2seq" / "model.py")).stdout
    assert "teacher_forcing_ratio=0 as " in shown and "train.py:10 passes it" in shown and "mode='greedy'" in shown
    assert "length_scale" not in shown  # not a guess: its own default


# --- where models live -----------------------------------------------------------------------------------------
def test_notebook_models_are_audited_without_running_data_or_training_cells():
    """The data cell opens a file that does not exist and the training cell loops: neither runs."""
    report = run(REPOS / "notebook" / "seq2seq.ipynb")
    found = results(report)
    model = found["notebook/seq2seq.ipynb:Seq2Seq"]
    assert model.status == "ok" and classes(model) == ["Seq2Seq", "Encoder", "Decoder"]
    assert model.built.startswith("built as in tests/fixtures/repos/notebook/seq2seq.ipynb:cell 8:4; guessed input_dim=64 (Encoder)")
    [dro] = [f for f in model.findings if f.code == "DRO001"]
    assert (dro.file, dro.line) == ("tests/fixtures/repos/notebook/seq2seq.ipynb:cell 6", 6)  # self.drop = nn.Dropout(0.5)
    assert [c.file for c in model.capture.classes] == ["tests/fixtures/repos/notebook/seq2seq.ipynb:cell 7",
                                                       "tests/fixtures/repos/notebook/seq2seq.ipynb:cell 5",
                                                       "tests/fixtures/repos/notebook/seq2seq.ipynb:cell 6"]
    done = cli(str(REPOS / "notebook"))
    assert "notebook/seq2seq.ipynb:cell 6:6 warning DRO001" in done.stdout


def test_a_folder_with_a_notebook_says_when_nbformat_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "nbformat", None)  # `import nbformat` raises ImportError
    [result] = run(REPOS / "notebook" / "seq2seq.ipynb").results
    assert result.status == "skipped" and "reading notebooks needs nbformat" in result.reason


def test_relative_imports_in_a_folder_without_init():
    found = results(run(REPOS / "relative"))
    model = found["relative/convnets/convnext_isotropic.py:ConvNeXtIsotropic"]
    assert model.status == "ok" and classes(model) == ["ConvNeXtIsotropic", "Block"]


def test_private_names_and_a_misnamed_constructor():
    report = run(REPOS / "private")
    found = results(report)
    assert found["private/nets.py:_model"].status == "ok" and classes(found["private/nets.py:_model"]) == ["_Backbone"]
    forgotten = found["private/nets.py:Forgotten"]
    assert forgotten.status == "skipped" and "its constructor is named `init`, not `__init__`" in forgotten.reason


def test_a_model_whose_base_only_the_runtime_mro_reveals(tmp_path, monkeypatch):
    """A base class from an installed wrapper package whose name says nothing (`wrapperlib.Base`)."""
    library = tmp_path / "lib" / "wrapperlib"
    library.mkdir(parents=True)
    (library / "__init__.py").write_text("import torch.nn as nn\n\n\nclass Base(nn.Module):\n    pass\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "requirements.txt").write_text("wrapperlib\n")
    (repo / "net.py").write_text("import torch\nimport torch.nn as nn\nfrom wrapperlib import Base\n\n\nclass Net(Base):\n    def __init__(self, num_classes):\n"
                                 "        super().__init__()\n        self.fc = nn.Linear(4, num_classes)\n\n    def forward(self, x):\n        return self.fc(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    [_, net] = run(repo).results
    assert net.status == "ok" and net.built == "built with guessed arguments: num_classes=10"


def test_a_kaggle_style_model_is_built_without_its_pretrained_weights(tmp_path, monkeypatch):
    """`CustomModel(CFG, pretrained=True)` around a model zoo's `create_model(name, pretrained=pretrained)`."""
    library = tmp_path / "lib"
    library.mkdir()
    (library / "fakezoo.py").write_text("import torch.nn as nn\n\n\ndef create_model(name, pretrained=False):\n    if pretrained:\n"
                                        "        raise RuntimeError('would download ' + name)\n    return nn.Sequential(nn.Linear(8, 8), nn.ReLU())\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "requirements.txt").write_text("fakezoo\n")
    (repo / "model.py").write_text("import torch.nn as nn\nimport fakezoo\n\n\nclass CFG:\n    model_name = 'mlp'\n    target_size = 3\n\n\n"
                                   "class CustomModel(nn.Module):\n    def __init__(self, cfg, pretrained=False):\n        super().__init__()\n"
                                   "        self.model = fakezoo.create_model(cfg.model_name, pretrained=pretrained)\n"
                                   "        self.fc = nn.Linear(8, cfg.target_size)\n\n    def forward(self, x):\n        return self.fc(self.model(x))\n")
    (repo / "train.py").write_text("from model import CFG, CustomModel\n\nmodel = CustomModel(CFG, pretrained=True)\nmodel.fit()\n")
    monkeypatch.syspath_prepend(str(library))
    found = {r.target.rsplit("/", 1)[-1]: r for r in run(repo).results}
    model = found["model.py:CustomModel"]
    assert model.status == "ok" and model.built == f"built as in {repo}/train.py:3; pretrained=False (nothing is downloaded)"


# --- every class accounted for ---------------------------------------------------------------------------------
def test_every_class_appears_once_even_when_its_file_fails_to_import(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\nfrom torch import not_in_torch_xyz\n\n\nclass Block(nn.Module):\n    pass\n\n\n"
                                     "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.b = Block()\n")
    report = run(tmp_path)
    statuses = {r.target.rsplit("/", 1)[-1]: r.status for r in report.results}
    assert statuses == {"net.py": "error", "net.py:Block": "skipped", "net.py:Net": "skipped"}
    assert report.classes() == {"defined": 2, "audited": 0, "covered": 0, "not_audited": 2}


def test_a_missing_packages_registry_decorator_keeps_the_class(tmp_path):
    """`@BACKBONES.register_module()` from a package that is not installed: registering changes nothing here."""
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\nfrom mmcv_not_installed_xyz import BACKBONES\n\n\n@BACKBONES.register_module()\n"
                                     "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 2)\n\n"
                                     "    def forward(self, x):\n        return self.fc(x)\n")
    found = {r.target.rsplit("/", 1)[-1]: r for r in run(tmp_path).results}
    assert found["net.py:Net"].status == "ok"


def test_a_class_its_own_file_renames_is_named_not_dropped(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                                     "        self.fc = nn.Linear(4, 2)\n\n\nNet = 3\n")
    report = run(tmp_path)
    [skipped] = [r for r in report.results if r.target.endswith("net.py:Net")]
    assert skipped.status == "skipped" and skipped.model_class.line == 4
    assert skipped.reason == (f"not audited: after {tmp_path / 'net.py'} is imported, `Net` no longer names the class "
                              "(it holds int: a decorator or a later assignment replaced it)")
    assert report.classes()["not_audited"] == 1


def test_the_parts_of_a_model_whose_audit_failed_are_named_not_dropped(tmp_path):
    """Seq2Seq is built (its encoder with it) but its forward fails on every input: the encoder, which only it
    covered, is not audited, and says so with a command."""
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "seq.py").write_text("import torch.nn as nn\n\n\nclass Encoder(nn.Module):\n    def __init__(self, vocab):\n"
                                     "        super().__init__()\n        self.emb = nn.Embedding(vocab, 8)\n\n    def forward(self, src):\n"
                                     "        return self.emb(src)\n\n\nclass Seq2Seq(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                                     "        self.encoder = Encoder(50)\n\n    def forward(self, src):\n"
                                     "        raise RuntimeError('reads a data file the audit does not have')\n")
    report = run(tmp_path)
    found = {r.target.rsplit("/", 1)[-1]: r for r in report.results}
    assert found["seq.py:Seq2Seq"].status == "error"
    encoder = found["seq.py:Encoder"]
    assert encoder.status == "skipped" and encoder.model_class.line == 4
    assert encoder.reason == (f"not audited: part of {tmp_path}/seq.py:Seq2Seq, whose audit did not complete; "
                              f"audit it with `audit {tmp_path}/seq.py:Encoder --kwargs '{{\"vocab\": ...}}'`")
    assert report.classes() == {"defined": 2, "audited": 0, "covered": 0, "not_audited": 2}

BASES = """import torch.nn as nn


class NNBase(nn.Module):
    def __init__(self, recurrent, recurrent_input_size, hidden_size):
        super().__init__()
        self._hidden_size = hidden_size
        if recurrent:
            self.gru = nn.GRU(recurrent_input_size, hidden_size)


class MLPBase(NNBase):
    def __init__(self, num_inputs, hidden_size=64):
        super().__init__(False, num_inputs, hidden_size)
        self.actor = nn.Sequential(nn.Linear(num_inputs, hidden_size), nn.Tanh(), nn.Linear(hidden_size, hidden_size), nn.Tanh())

    def forward(self, inputs):
        return self.actor(inputs)
"""


def test_a_base_class_is_covered_by_the_audited_model_derived_from_it(tmp_path):
    """a2c's NNBase: its constructor and methods run inside MLPBase, which is audited."""
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "nets.py").write_text(BASES)
    report = run(tmp_path)
    [mlp] = [r for r in report.results if r.target.endswith(":MLPBase")]
    assert classes(mlp) == ["MLPBase", "NNBase"]
    assert report.classes() == {"defined": 2, "audited": 1, "covered": 1, "not_audited": 0}
    assert not report.skipped


def test_a_helper_the_constructor_imports_is_judged_by_its_code_not_its_name(tmp_path):
    """`from utils import init` (a2c's weight initializer) is building; `from utils import save` that writes is not."""
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "utils.py").write_text("def init(module, weight_init):\n    weight_init(module.weight)\n    return module\n\n\n"
                                       "def save(module):\n    open('weights.txt', 'w').write(str(module))\n    return module\n")
    (tmp_path / "nets.py").write_text("import torch.nn as nn\n\nfrom utils import init, save\n\n\nclass Net(nn.Module):\n"
                                      "    def __init__(self):\n        super().__init__()\n        self.fc = init(nn.Linear(4, 2), nn.init.orthogonal_)\n\n"
                                      "    def forward(self, x):\n        return self.fc(x)\n\n\nclass Saved(Net):\n    def __init__(self):\n"
                                      "        super().__init__()\n        save(self.fc)\n")
    found = {r.target.rsplit("/", 1)[-1]: r for r in run(tmp_path).results}
    assert found["nets.py:Net"].status == "ok"
    assert found["nets.py:Saved"].status == "skipped"
    assert found["nets.py:Saved"].reason.startswith("not built: its constructor would run `save(...)` (`open(")
    assert not (tmp_path / "weights.txt").exists()

def test_packages_that_are_not_installed_are_stood_in_for_until_a_model_needs_them(tmp_path):
    """`import wandb` at the top of a model file: the models that do not use it are audited; one whose forward
    does is not audited, saying what to install; an import guard's fallback is kept."""
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\nimport wandb_not_installed_xyz as wandb\nfrom sklearn_not_installed_xyz.metrics import f1_score\n"
        "try:\n    from apex_not_installed_xyz import FusedLayerNorm as LayerNorm\nexcept ImportError:\n    LayerNorm = nn.LayerNorm\n\n"
        "\n\n@wandb.log_calls\ndef step(x):\n    return x\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.norm = LayerNorm(4)\n\n    def forward(self, x):\n        return self.norm(x)\n\n\n"
        "class Scored(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 2)\n\n"
        "    def forward(self, x):\n        return f1_score(self.fc(x), x)\n")
    found = {r.target.rsplit("/", 1)[-1]: r for r in run(tmp_path).results}
    assert found["net.py:Net"].status == "ok"
    assert "imported without wandb_not_installed_xyz, sklearn_not_installed_xyz (not installed; building this model did not need it)" in found["net.py:Net"].capture.notes
    assert found["net.py:Scored"].status == "skipped"
    assert found["net.py:Scored"].reason == ("not audited: auditing it needs sklearn_not_installed_xyz, which is not installed "
                                            "(`pip install sklearn-not-installed-xyz`)")


def test_a_scripts_classes_are_all_listed_blocks_included(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "train.py").write_text("import torch.nn as nn\n\n\nclass Block(nn.Module):\n    pass\n\n\nclass Net(nn.Module):\n"
                                       "    def __init__(self):\n        super().__init__()\n        self.b = Block()\n\n\nNet().train_loop()\n")
    skipped = [r for r in run(tmp_path).results if r.status == "skipped"]
    assert [r.target.rsplit("/", 1)[-1] for r in skipped] == ["train.py:Block", "train.py:Net"]
    assert all(r.model_class is not None and r.reason.startswith("not imported: `Net().train_loop(...)` at line 14 would run on import") for r in skipped)


def test_classes_the_import_does_not_reach_are_named(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "m.py").write_text("import torch.nn as nn\n\n\ndef make():\n    class Inner(nn.Module):\n        pass\n    return Inner\n\n\n"
                                   "if __name__ == '__main__':\n    class Debug(nn.Module):\n        pass\n")
    report = run(tmp_path)
    reasons = {r.target.rsplit("/", 1)[-1]: r.reason for r in report.skipped}
    assert reasons == {"m.py:Inner": "not audited: defined inside `make()`, which the audit does not run; define it at the top level of the file to audit it",
                       "m.py:Debug": "not audited: defined under `if __name__ == \"__main__\":`, which the audit does not run; define it at the top level of the file to audit it"}
    assert report.classes()["not_audited"] == 2


def test_the_summary_counts_classes_and_json_lists_the_covered_ones():
    done = cli(str(REPOS / "unet"), "--format", "json")
    document = json.loads(done.stdout)
    [unet] = [r for r in document["results"] if r["target"].endswith(":UNet")]
    assert unet["capture"]["classes"] == [
        {"name": "UNet", "file": "tests/fixtures/repos/unet/unet/model.py", "line": 6},
        {"name": "DoubleConv", "file": "tests/fixtures/repos/unet/unet/parts.py", "line": 5},
        {"name": "Up", "file": "tests/fixtures/repos/unet/unet/parts.py", "line": 17},
    ]
    assert unet["built"] == "built as in tests/fixtures/repos/unet/train.py:6"
    assert document["summary"]["classes"] == {"defined": 3, "audited": 1, "covered": 2, "not_audited": 0}
    assert "3 classes: 1 audited, 2 covered, 0 not audited" in invoke(str(REPOS / "unet")).stdout  # the text, in this process


# --- --kwargs on whole files -----------------------------------------------------------------------------------
def test_kwargs_on_a_folder_apply_where_accepted_and_an_unknown_key_is_a_usage_error():
    done = cli(str(REPOS / "rl"), "--kwargs", '{"hidden": 8}', "--format", "json")
    [policy] = [r for r in json.loads(done.stdout)["results"] if r["target"].endswith(":Policy")]
    assert policy["status"] == "ok" and policy["built"].endswith("rl/main.py:8; --kwargs hidden")
    wrong = cli(str(REPOS / "rl"), "--kwargs", '{"hiden": 8}')
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.strip() == ("audit: error: --kwargs: no model in the 3 audited files takes 'hiden' "
                                    "(their parameters: act_dim, hidden, obs_dim)")


@pytest.mark.parametrize("repo", sorted(p.name for p in REPOS.iterdir() if p.is_dir()))
def test_no_fixture_repository_leaves_a_class_unaccounted(repo):
    """Every nn.Module class a fixture repository defines is audited, covered, or named as not audited."""
    report = run(REPOS / repo)
    counts = report.classes()
    assert counts["defined"] == counts["audited"] + counts["covered"] + counts["not_audited"] > 0
    named = {(r.model_class.key[1]) for r in report.results if r.model_class is not None}
    named |= {c.name for r in report.results if r.capture is not None for c in r.capture.classes}
    defined = {n for p in (REPOS / repo).rglob("*.py") for n in _classes(p)}
    assert defined <= named, defined - named


def _classes(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.endswith("Config")}


# --- reading values from source ----------------------------------------------------------------------------------
MODEL = "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self, width, depth=1):\n        super().__init__()\n"


@pytest.mark.parametrize("script, expected", [
    ("from opts import get_args\nfrom net import Net\n\nargs = get_args()\nNet(args.width, depth=args.depth)\n", {"width": 12, "depth": 3}),
    ("import argparse\nfrom net import Net\np = argparse.ArgumentParser()\np.add_argument('--width', type=int, default='7')\n"
     "args, _ = p.parse_known_args()\nargs.depth = args.width * 2\nNet(**vars(args))\n", {"width": 7, "depth": 14}),
    ("import json\nfrom net import Net\nwith open('cfg.json') as f:\n    cfg = json.load(f)\nNet(cfg['net']['width'])\n", {"width": 5}),
    ("from net import Net\nWIDTH = 4\nsizes = [WIDTH * k for k in (1, 2)]\nfor w in [WIDTH]:\n    Net(w, depth=len('ab'))\n", {"width": 4, "depth": 2}),
    ("from net import Net\n\ndef build(width, depth=2):\n    return Net(width, depth)\n\nmodel = build(9)\n", {"width": 9, "depth": 2}),
    ("from net import Net\nimport random\nwidth = 3\nif random.random() > 0.5:\n    width = int(input())\nNet(width)\n", {"width": 3}),
])
def test_what_reading_resolves(tmp_path, script, expected):
    (tmp_path / "requirements.txt").write_text("torch\n")
    (tmp_path / "net.py").write_text(MODEL)
    (tmp_path / "opts.py").write_text("import argparse\n\ndef get_args():\n    parser = argparse.ArgumentParser()\n"
                                      "    parser.add_argument('--width', type=int, default=12)\n    parser.add_argument('--depth', default=3)\n"
                                      "    return parser.parse_args()\n")
    (tmp_path / "cfg.json").write_text('{"net": {"width": 5}}')
    (tmp_path / "main.py").write_text(script)
    build = Planner(Repository(tmp_path, Project())).file_plan(tmp_path / "net.py").classes["Net"].build
    assert dict(build.kwargs) == expected and build.site is not None and not build.guessed


def test_a_local_import_resolves_alike_for_the_reach_and_the_source_rules(tmp_path, monkeypatch):
    """One lookup (`module_file`) answers both: the reach (`Repository.locate`) also looks below the root, where
    scripts run from, and never answers with a file outside it; a source rule's relative path is read from the
    working directory."""
    from auditor.rule import SourceContext
    from auditor.static.project import module_file

    outer = tmp_path / "outer.py"
    root = tmp_path / "repo"
    for name in ("requirements.txt", "models/__init__.py", "models/nets.py", "scripts/train.py",
                 "pkg/__init__.py", "pkg/b.py", "pkg/sub/__init__.py", "pkg/sub/a.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x = 1\n")
    outer.write_text("x = 1\n")
    a, train = root / "pkg/sub/a.py", root / "scripts/train.py"
    assert module_file(a, ["b"], level=2) == root / "pkg/b.py"  # from ..b import x
    assert module_file(a, [], level=2) == root / "pkg/__init__.py"  # from .. import b
    assert module_file(a, ["pkg", "b"]) == root / "pkg/b.py"  # import pkg.b, from the top of its package
    assert module_file(a, ["torch"]) is None and module_file(a, []) is None
    assert module_file(train, ["models", "nets"]) is None  # not beside the script
    assert module_file(train, ["models", "nets"], roots=[root]) == root / "models/nets.py"
    assert module_file(a, ["outer"], level=4) == outer

    repository = Repository(root, Project())
    assert repository.locate(train, ["models", "nets"], 0) == root / "models/nets.py"
    assert repository.locate(a, [], 2) == root / "pkg/__init__.py"
    assert repository.locate(a, ["outer"], 4) is None  # outside the repository

    monkeypatch.chdir(root)
    context = SourceContext(path="pkg/sub/a.py", text="", tree=None, settings={})
    assert context.local_module("b", level=2)[0] == str(Path("pkg/b.py"))
    assert context.local_module("", level=2)[0] == str(Path("pkg/__init__.py"))
    assert context.local_module("models.nets")[0] == str(Path("models/nets.py"))  # the top of a.py's package
    script = SourceContext(path="scripts/train.py", text="", tree=None, settings={})
    assert script.local_module("models.nets") is None  # a script's imports start beside it, as Python's do
