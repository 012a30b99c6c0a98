"""--kwargs (and `[tool.auditor] targets` kwargs) give what constructors take: tuples, config objects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest

from auditor.errors import TargetError
from auditor.loading.arguments import build_config, convert, describe_arguments, kwargs_template
from support import FIXTURES, cli, run


@dataclass
class PatchConfig:
    img_size: Tuple[int, int] = (32, 32)
    depth: int = 2


class Vit:
    def __init__(self, img_size=(224, 224), patch: Tuple[int, int] = (16, 16), strides: Optional[tuple[int, ...]] = None,
                 config: PatchConfig = PatchConfig(), name: str = "vit", extra: dict = None):
        self.args = (img_size, patch, strides, config, name, extra)


def test_lists_become_tuples_where_the_parameter_holds_one():
    converted = convert(Vit, {"img_size": [64, 64], "patch": [8, 8], "strides": [1, 2], "name": "x", "extra": {"a": [1]}})
    assert converted == {"img_size": (64, 64), "patch": (8, 8), "strides": (1, 2), "name": "x", "extra": {"a": [1]}}


def test_a_mapping_becomes_the_config_class_the_parameter_declares():
    config = convert(Vit, {"config": {"img_size": [48, 48]}})["config"]
    assert config == PatchConfig(img_size=(48, 48), depth=2)
    with pytest.raises(TargetError, match=r"PatchConfig has no field 'width' \(fields: img_size, depth\)"):
        build_config(PatchConfig, {"width": 3})


def test_an_unannotated_config_parameter_takes_the_modules_config_dataclass():
    """nanoGPT's `GPT(config)` next to its `GPTConfig` dataclass."""
    done = cli(f"{FIXTURES / 'discovery' / 'gpt_parts.py'}:GPT", "--kwargs", '{"config": {"n_layer": 1, "n_embd": 8}}', "--format", "json")
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)["results"]
    assert result["status"] == "ok" and result["capture"]["method"] == "fx"


def test_the_template_shows_where_a_mapping_goes():
    assert kwargs_template(Vit, ["img_size", "config"]) == '{"img_size": ..., "config": {...}}'
    assert describe_arguments(Vit, ["name", "config"]) == "name, config (a PatchConfig, from a JSON object)"


def test_configured_targets_get_the_same_conversions(tmp_path):
    (tmp_path / "net.py").write_text(
        "from dataclasses import dataclass\nimport torch.nn as nn\n\n\n@dataclass\nclass NetConfig:\n    width: int = 4\n\n\n"
        "class Net(nn.Module):\n    def __init__(self, config: NetConfig, kernel=(3, 3)):\n        super().__init__()\n"
        "        assert isinstance(kernel, tuple) and isinstance(config, NetConfig)\n"
        "        self.conv = nn.Conv2d(3, config.width, kernel, bias=False)\n        self.bn = nn.BatchNorm2d(config.width)\n\n"
        "    def forward(self, x):\n        return self.bn(self.conv(x)).relu()\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.auditor]\ntargets = [{ target = "net.py:Net", kwargs = { config = { width = 6 }, kernel = [1, 1] }, input = ["2,3,8,8"] }]\n')
    done = cli("--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)["results"]
    assert result["status"] == "ok" and result["target"] == "net.py:Net"


def test_a_config_the_class_refuses_is_a_clear_error():
    report = run(f"{FIXTURES / 'discovery' / 'gpt_parts.py'}:GPT", kwargs={"config": {"layers": 2}})
    [result] = report.results
    assert result.status == "error" and "GPTConfig has no field 'layers'" in result.error


@dataclass
class Hyper:
    width: int = 8
    depth: int = 2


class Settings:  # a plain config class: built from the keys
    def __init__(self, act: str = "relu", scale: float = 1.0):
        self.act, self.scale = act, scale


class Annotated:
    def __init__(self, hp: Hyper, opts: "Settings", table: dict = None, anything: object = None, either: Optional[Hyper] = None):
        self.args = (hp, opts, table, anything, either)


def test_a_mapping_becomes_the_dataclass_or_config_class_an_annotation_names():
    converted = convert(Annotated, {"hp": {"width": 16}, "opts": {"scale": 0.5}, "table": {"a": 1}, "anything": {"b": 2}, "either": {"depth": 3}})
    assert converted["hp"] == Hyper(width=16, depth=2) and converted["either"] == Hyper(width=8, depth=3)
    assert isinstance(converted["opts"], Settings) and (converted["opts"].act, converted["opts"].scale) == ("relu", 0.5)
    assert converted["table"] == {"a": 1} and converted["anything"] == {"b": 2}  # dict and object take the mapping as it is


def test_kwargs_build_a_model_whose_constructor_takes_config_objects(tmp_path):
    (tmp_path / "net.py").write_text(
        "from dataclasses import dataclass\n\nimport torch.nn as nn\n\n\n@dataclass\nclass Hyper:\n    width: int = 8\n    depth: int = 2\n\n\n"
        "class Cfg:\n    def __init__(self, classes: int = 4):\n        self.classes = classes\n\n\n"
        "class Net(nn.Module):\n    def __init__(self, hp: Hyper, config: Cfg):\n        super().__init__()\n"
        "        self.body = nn.Sequential(*[nn.Linear(hp.width, hp.width) for _ in range(hp.depth)])\n"
        "        self.head = nn.Linear(hp.width, config.classes)\n\n    def forward(self, x):\n        return self.head(self.body(x))\n"
    )
    done = cli("net.py:Net", "--kwargs", '{"hp": {"width": 16, "depth": 3}, "config": {"classes": 10}}', "--input", "2,16",
               "--format", "json", cwd=tmp_path)
    (result,) = json.loads(done.stdout)["results"]
    assert result["status"] == "ok", done.stderr
    assert result["capture"]["nodes"] == 6  # input, three body Linears, the head, output: the JSON values were used
