"""Real model zoos, audited as users would (`audit torchvision.models:resnet50 --kwargs '{"weights": null}'`):
every model must capture, and no warning or error may appear (a finding on a torchvision, timm or Hugging Face
model is a bug of the rule until shown otherwise). The few findings that were shown true are listed in `KNOWN`
with the reasoning, and must stay found. Infos are printed per model for a person to judge.

Hugging Face models are built from small configs (tests/fixtures/zoo/hf_configs.py), their inputs inferred unless
given. Inputs are as small as each architecture allows (patch and window grids need 224), so that the zoo runs
in a few minutes on two cores.
A representative subset is also probed (`--probe`) at batch sizes 1 and 2: a canonical model at initialization
gets no probe finding at all (no vanishing/exploding gradients, no float16 overflow, autocast close to float32).

Opt-in: `pip install -e .[zoo]`, then `pytest tests/test_zoo.py --run-zoo -s`. Weights are never downloaded
(`weights=None`, `weights_backbone=None`, `pretrained=False`). `ZOO_CAPTURE=hooks` (or fx, export, or a comma
list) forces a capture method instead of the default fx -> hooks -> export chain.
"""

from __future__ import annotations

import os
import time
from fnmatch import fnmatch
from typing import NamedTuple

import pytest

from auditor.findings import Severity
from support import FIXTURES, model_results, run

pytestmark = pytest.mark.zoo

IMAGE = "1,3,224,224"  # patch and window grids (ViT, Swin, MaxViT...) are built for it
SMALL = "1,3,64,64"  # convolutional networks: any size their strides divide
MEDIUM = "1,3,96,96"  # Inception stems need at least 75 pixels

TORCHVISION = [  # (name, input)
    ("resnet18", SMALL), ("resnet50", SMALL), ("resnext50_32x4d", SMALL), ("vgg11_bn", SMALL), ("vgg16", SMALL),
    ("alexnet", SMALL), ("squeezenet1_0", SMALL), ("squeezenet1_1", SMALL), ("googlenet", SMALL),
    ("inception_v3", MEDIUM), ("densenet121", SMALL), ("mobilenet_v2", SMALL), ("mobilenet_v3_small", SMALL),
    ("mobilenet_v3_large", SMALL), ("mnasnet0_5", SMALL), ("shufflenet_v2_x0_5", SMALL),
    ("efficientnet_b0", SMALL), ("efficientnet_v2_s", SMALL), ("regnet_y_400mf", SMALL),
    ("regnet_x_400mf", SMALL), ("convnext_tiny", SMALL), ("vit_b_16", IMAGE), ("swin_t", IMAGE),
    ("swin_v2_t", IMAGE), ("maxvit_t", IMAGE),
]
TORCHVISION_TASKS = [  # (module, name, input): dense prediction, video, quantization-ready
    ("segmentation", "fcn_resnet50", SMALL), ("segmentation", "lraspp_mobilenet_v3_large", SMALL),
    ("segmentation", "deeplabv3_mobilenet_v3_large", SMALL), ("video", "r3d_18", "1,3,4,32,32"),
    ("video", "r2plus1d_18", "1,3,4,32,32"), ("quantization", "mobilenet_v2", SMALL),
]
TIMM = [  # (name, input)
    ("resnet26d", SMALL), ("resnetv2_50x1_bit", SMALL), ("res2net50_26w_4s", SMALL), ("resnest14d", SMALL),
    ("skresnet18", SMALL), ("nf_resnet26", SMALL), ("nf_regnet_b0", SMALL), ("regnetx_002", SMALL),
    ("densenet121", SMALL), ("vgg11_bn", SMALL), ("dla34", SMALL), ("dpn68", SMALL), ("xception41", SMALL),
    ("inception_v4", MEDIUM), ("inception_resnet_v2", MEDIUM), ("nasnetalarge", MEDIUM),
    ("efficientnet_b0", SMALL), ("mixnet_s", SMALL), ("spnasnet_100", SMALL), ("mobilenetv3_small_050", SMALL),
    ("mobilenetv4_hybrid_medium", SMALL), ("ghostnet_100", SMALL), ("ghostnetv2_100", SMALL),
    ("rexnet_100", SMALL), ("cspdarknet53", SMALL), ("repvgg_a0", SMALL), ("mobileone_s0", SMALL),
    ("hrnet_w18_small", SMALL), ("convnext_atto", SMALL), ("edgenext_xx_small", SMALL), ("fastvit_t8", SMALL),
    ("mobilevit_xxs", SMALL), ("efficientvit_b0", SMALL), ("poolformer_s12", SMALL), ("levit_128s", IMAGE),
    ("vit_tiny_patch16_224", IMAGE), ("deit_tiny_patch16_224", IMAGE), ("eva02_tiny_patch14_224", IMAGE),
    ("cait_xxs24_224", IMAGE), ("convit_tiny", IMAGE), ("crossvit_tiny_240", "1,3,240,240"),
    ("pvt_v2_b0", SMALL), ("twins_svt_small", IMAGE), ("tiny_vit_5m_224", IMAGE), ("coatnet_nano_rw_224", IMAGE),
    ("efficientformer_l1", IMAGE), ("xcit_nano_12_p16_224", SMALL), ("mixer_s16_224", IMAGE),
    ("resmlp_12_224", IMAGE), ("gmlp_ti16_224", IMAGE), ("sequencer2d_s", IMAGE),
]
HUGGING_FACE = [  # (factory in hf_configs.py, inputs (space-separated, one per forward argument) or None to infer them)
    ("bert", None), ("distilbert", None), ("roberta", None), ("albert", None), ("electra", None),
    ("deberta_v2", None), ("mobilebert", None), ("squeezebert", None), ("fnet", None), ("t5_encoder", None),
    ("t5", "long:1,8 long:1,8 long:1,8"), ("bart", None), ("gpt2", None), ("llama", None), ("mistral", None),
    ("qwen2", None), ("gemma", None), ("phi", None), ("gpt_neox", None), ("opt", None), ("bloom", None),
    ("falcon", None), ("mamba", None), ("whisper_encoder", None), ("whisper", "1,16,64 long:1,64 long:1,8"),
    ("wav2vec2", "2,400"), ("conformer", "2,400"), ("patchtst", "2,32,3"),
    ("vit", None), ("clip_vision", None), ("dinov2", None), ("beit", None), ("swin", None), ("convnext", None),
    ("resnet", None), ("mobilevit", None), ("segformer", None),
]

# Findings on real architectures that were judged true (against /work/shared/KNOWLEDGE.md's account of each
# rule): (code, module glob) per model. They must stay found, and nothing else may appear.
KNOWN = {
    # The ASPP projection ends in Dropout(0.5), and DeepLabHead follows it with Conv3x3 -> BatchNorm: dropout
    # before a BatchNorm through a weight layer, the variance shift of Li et al. (CVPR 2019).
    "torchvision segmentation deeplabv3_mobilenet_v3_large": {("DRO002", "classifier.0.project.3")},
    # XCiT's local patch interaction is conv -> GELU -> BatchNorm -> conv on purpose (El-Nouby et al. 2021): the
    # norm normalizes an activation's output, the order NRM001 describes; a deliberate, working design.
    "timm xcit_nano_12_p16_224": {("NRM001", "blocks.*.local_mp.bn")},
}


def _captures() -> dict[str, tuple[str, ...]]:
    forced = os.environ.get("ZOO_CAPTURE")
    return {"capture": tuple(forced.split(","))} if forced else {}


def _audit(target: str, kwargs: dict, label: str, inputs: list[str]) -> None:
    started = time.perf_counter()
    report = run(target, kwargs=kwargs, inputs=inputs, **_captures())
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
    known = KNOWN.get(label, set())
    serious = [f for r in models for f in r.findings if f.severity >= Severity.WARNING]
    unexpected = [f for f in serious if not any(f.code == code and fnmatch(f.module or "", glob) for code, glob in known)]
    assert not unexpected, "\n".join(f"{f.code} [{f.module}] {f.message}" for f in unexpected)
    lost = [(code, glob) for code, glob in known if not any(f.code == code and fnmatch(f.module or "", glob) for f in serious)]
    assert not lost, f"{label}: known findings no longer reported: {lost}"


class Case(NamedTuple):
    """One model of the zoo, as a user audits it: `audit TARGET --kwargs KWARGS --input INPUTS`."""

    package: str  # the optional dependency it needs
    label: str
    target: str
    kwargs: dict
    inputs: list[str]


def zoo() -> list[Case]:
    """Every model of the zoo, each at its smallest input (none: inferred)."""
    cases = [Case("torchvision", f"torchvision {n}", f"torchvision.models:{n}", {"weights": None}, [s]) for n, s in TORCHVISION]
    cases += [
        Case("torchvision", f"torchvision {m} {n}", f"torchvision.models.{m}:{n}",
             {"weights": None, **({"weights_backbone": None} if m == "segmentation" else {})}, [s])
        for m, n, s in TORCHVISION_TASKS
    ]
    cases += [Case("timm", f"timm {n}", "timm:create_model", {"model_name": n, "pretrained": False}, [s]) for n, s in TIMM]
    cases += [
        Case("transformers", f"transformers {n}", f"{FIXTURES / 'zoo' / 'hf_configs.py'}:{n}", {}, s.split() if s else [])
        for n, s in HUGGING_FACE
    ]
    return cases


@pytest.mark.parametrize("case", zoo(), ids=lambda c: c.label.replace(" ", "-"))
def test_zoo_model(case: Case) -> None:
    pytest.importorskip(case.package)
    _audit(case.target, case.kwargs, case.label, case.inputs)


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


@pytest.mark.parametrize("name", ["MIXTRAL_8X7B", "DEEPSEEK_V3"])
def test_mixture_of_experts_configs_on_meta_judge_their_fused_experts(name: str, tmp_path) -> None:
    """A Mixtral- or DeepSeek-V3-shaped config.json, too large for memory, is audited on meta: clean as
    configured (std 0.02 between RMSNorms), and with a planted initializer_range of 1.0 every fused expert
    tensor (most of the parameters) gets its INI001, judged per expert as the forward applies it."""
    import json

    pytest.importorskip("transformers")
    from auditor.loading.importing import import_file

    config = getattr(import_file(FIXTURES / "zoo" / "hf_configs.py"), name)
    for planted in (False, True):
        path = tmp_path / ("planted" if planted else "clean") / "config.json"
        path.parent.mkdir()
        path.write_text(json.dumps({**config, **({"initializer_range": 1.0} if planted else {})}))
        [result] = run(path).results
        assert result.status == "ok", result.error
        notes = result.capture.notes
        assert any(n.startswith("audited on meta") for n in notes) and not [n for n in notes if "not judged" in n and "expert" in n]
        serious = [f for f in result.findings if f.severity >= Severity.WARNING]
        if not planted:
            assert serious == [], [f.message for f in serious]
            continue
        experts = {f.message.split("`")[1] for f in serious if f.code == "INI001" and ".experts." in f.message}
        layers = [i for i in range(config["num_hidden_layers"]) if i >= config.get("first_k_dense_replace", 0)]
        assert experts == {f"model.layers.{i}.mlp.experts.{p}" for i in layers for p in ("gate_up_proj", "down_proj")}
