"""The zoo without weights (opt-in, `--run-zoo`): for every torchvision, timm and Hugging Face model of the zoo
test, the init record of a meta build tells the std of each weight the values of a real build show (or says it
does not know), and the audit on meta finds exactly what the audit on real weights finds."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch

from auditor.graph.inits import Measured
from auditor.loading.importing import import_file
from support import FIXTURES, run
from test_inits import built_both_ways
from test_zoo import HUGGING_FACE, IMAGE, TIMM, TORCHVISION

pytestmark = pytest.mark.zoo

HF_CONFIGS = FIXTURES / "zoo" / "hf_configs.py"


def _cases() -> list[Any]:
    cases = [pytest.param("torchvision", n, f"torchvision.models:{n}", {"weights": None}, IMAGE, id=f"torchvision-{n}") for n in TORCHVISION]
    cases += [pytest.param("timm", n, "timm:create_model", {"model_name": n, "pretrained": False}, IMAGE, id=f"timm-{n}") for n in TIMM]
    cases += [pytest.param("transformers", n, f"{HF_CONFIGS}:{n}", {}, [], id=f"hf-{n}") for n in HUGGING_FACE]
    return cases


def _builder(package: str, name: str) -> Callable[[], torch.nn.Module]:
    module = pytest.importorskip(package)
    if package == "torchvision":
        return lambda: getattr(module.models, name)(weights=None)
    if package == "timm":
        return lambda: module.create_model(name, pretrained=False)
    return getattr(import_file(HF_CONFIGS), name)


@pytest.mark.parametrize(("package", "name", "target", "kwargs", "inputs"), _cases())
def test_record_tells_what_the_values_show_and_meta_finds_what_real_finds(package, name, target, kwargs, inputs):
    real, meta, record = built_both_ways(_builder(package, name))
    gaps = []
    for (label, weight), meta_weight in zip(real.named_parameters(), meta.parameters()):
        init = record.init_of(meta_weight)
        if weight.dim() < 2 or init is None:
            continue
        measured, recorded = Measured(weight).std_mean()[0], init.std_mean()[0]
        allowed = 0.05 + 4 / math.sqrt(2 * weight.numel())  # a realized std's own spread on tiny tensors
        if abs(measured - recorded) > allowed * max(measured, recorded):
            gaps.append(f"{label}: recorded {recorded:.4g}, values {measured:.4g} ({init.how})")
    assert not gaps, "\n".join(gaps)

    real_report = run(target, kwargs=kwargs, inputs=inputs)
    meta_report = run(target, kwargs=kwargs, inputs=inputs, meta=True)
    [result] = [r for r in meta_report.results if r.capture is not None]
    assert result.status == "ok", result.error
    assert _findings(meta_report) == _findings(real_report)


def _findings(report) -> list[tuple[str, str | None, str | None, int | None]]:
    return sorted((f.code, f.module, f.file, f.line) for r in report.results for f in r.findings)
