"""Real model zoos, audited as users would (`audit torchvision.models:resnet50 --kwargs '{"weights": null}'`):
every model must capture, and no error-severity finding is allowed (an error on a torchvision or timm model is
a bug of the rule until shown otherwise). Warnings and infos are printed per model for a person to judge.

Hugging Face models are built from small configs (tests/fixtures/zoo/hf_configs.py) and their inputs inferred.
A representative subset is also probed (`--probe`) at batch sizes 1 and 2: a canonical model at initialization
gets no probe finding at all (no vanishing/exploding gradients, no float16 overflow, autocast close to float32).

Opt-in: `pip install -e .[zoo]`, then `pytest tests/test_zoo.py --run-zoo -s`. Weights are never downloaded
(`weights=None`, `pretrained=False`). `ZOO_CAPTURE=hooks` (or fx, export, or a comma list) forces a capture
method instead of the default fx -> export -> hooks chain.
"""

from __future__ import annotations

import os
import time

import pytest

from auditor.findings import Severity
from support import FIXTURES, model_results, run

pytestmark = pytest.mark.zoo

IMAGE = ["1,3,224,224"]

TORCHVISION = [
    "resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121", "efficientnet_b0",
    "convnext_tiny", "vit_b_16", "swin_t", "regnet_y_400mf", "shufflenet_v2_x0_5", "squeezenet1_0",
    "alexnet", "googlenet", "mnasnet0_5", "resnext50_32x4d",
]
TIMM = [
    "resnet26d", "efficientnet_b0", "convnext_atto", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
    "mobilenetv3_small_050", "levit_128s", "regnetx_002", "mixer_s16_224", "poolformer_s12",
    "nf_resnet26", "resmlp_12_224", "cait_xxs24_224", "ghostnet_100", "repvgg_a0", "hrnet_w18_small",
    "mobilevit_xxs",
]


def _captures() -> dict[str, tuple[str, ...]]:
    forced = os.environ.get("ZOO_CAPTURE")
    return {"capture": tuple(forced.split(","))} if forced else {}


HUGGING_FACE = ["bert", "distilbert", "gpt2", "llama", "t5_encoder", "vit"]


def _audit(target: str, kwargs: dict, label: str, inputs: list[str] | None = IMAGE) -> None:
    started = time.perf_counter()
    report = run(target, kwargs=kwargs, inputs=inputs or [], **_captures())
    seconds = time.perf_counter() - started
    models = model_results(report)
    assert models, f"{label}: nothing audited"
    for result in models:
        assert result.status == "ok", f"{label}: {result.error}"
        capture = result.capture
        method, nodes = (capture.method, capture.nodes) if capture else ("?", 0)
        print(f"\n== {label}: {method}, {nodes} nodes, {seconds:.1f}s")
        for note in capture.notes if capture else []:
            print(f"   note: {note}")
        for f in result.findings:
            print(f"   {f.code} {f.severity} [{f.module}] {f.message}")
    errors = [f for r in models for f in r.findings if f.severity >= Severity.ERROR]
    assert not errors, "\n".join(f"{f.code} [{f.module}] {f.message}" for f in errors)
    failed_rules = [n for r in models for n in (r.capture.notes if r.capture else []) if n.startswith("rule ")]
    assert not failed_rules, failed_rules


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_model(name: str) -> None:
    pytest.importorskip("torchvision")
    _audit(f"torchvision.models:{name}", {"weights": None}, f"torchvision {name}")


@pytest.mark.parametrize("name", TIMM)
def test_timm_model(name: str) -> None:
    pytest.importorskip("timm")
    _audit("timm:create_model", {"model_name": name, "pretrained": False}, f"timm {name}")


@pytest.mark.parametrize("name", HUGGING_FACE)
def test_hugging_face_model(name: str) -> None:
    pytest.importorskip("transformers")
    _audit(f"{FIXTURES / 'zoo' / 'hf_configs.py'}:{name}", {}, f"transformers {name}", inputs=None)


PROBED = [  # (label, target, kwargs, input): small-std heads, BatchNorm + global pool, attention, LayerNorm, SE gates
    ("torchvision mobilenet_v3_small", "torchvision.models:mobilenet_v3_small", {"weights": None}, "{batch},3,224,224"),
    ("torchvision resnet18", "torchvision.models:resnet18", {"weights": None}, "{batch},3,224,224"),
    ("torchvision efficientnet_b0", "torchvision.models:efficientnet_b0", {"weights": None}, "{batch},3,224,224"),
    ("torchvision squeezenet1_0", "torchvision.models:squeezenet1_0", {"weights": None}, "{batch},3,224,224"),
    ("timm mobilenetv3_small_050", "timm:create_model", {"model_name": "mobilenetv3_small_050", "pretrained": False}, "{batch},3,224,224"),
    ("timm vit_tiny_patch16_224", "timm:create_model", {"model_name": "vit_tiny_patch16_224", "pretrained": False}, "{batch},3,224,224"),
    ("timm regnetx_002", "timm:create_model", {"model_name": "regnetx_002", "pretrained": False}, "{batch},3,224,224"),
    ("transformers bert", f"{FIXTURES / 'zoo' / 'hf_configs.py'}:bert", {}, "long:{batch},16"),
    ("transformers gpt2", f"{FIXTURES / 'zoo' / 'hf_configs.py'}:gpt2", {}, "long:{batch},16"),
    ("transformers t5_encoder", f"{FIXTURES / 'zoo' / 'hf_configs.py'}:t5_encoder", {}, "long:{batch},16"),
]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(("label", "target", "kwargs", "spec"), PROBED, ids=[case[0] for case in PROBED])
def test_probes_are_quiet_on_canonical_models(label: str, target: str, kwargs: dict, spec: str, batch: int) -> None:
    library = {"torchvision": "torchvision", "timm": "timm", "transformers": "transformers"}[label.split()[0]]
    pytest.importorskip(library)
    report = run(target, kwargs=kwargs, inputs=[spec.format(batch=batch)], probe=True, device="cpu", select=["GRD", "AMP", "CLP"])
    models = model_results(report)
    assert models and all(r.status == "ok" for r in models), [r.error for r in models]
    assert all(r.probes.get("layers") for r in models), f"{label}: nothing probed"
    findings = [f"{f.code} [{f.module}] {f.message}" for r in models for f in r.findings]
    assert not findings, findings
