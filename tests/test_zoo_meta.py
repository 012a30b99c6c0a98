"""The zoo without weights (opt-in, `--run-zoo`): for every torchvision, timm and Hugging Face model of the zoo
test, the init record of a meta build tells the std of each weight the values of a real build show (or says it
does not know), and the audit on meta finds exactly what the audit on real weights finds."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Callable

import pytest
import torch

from auditor.graph.inits import Measured
from auditor.loading.importing import import_file
from support import run
from test_inits import built_both_ways
from test_zoo import Case, zoo

pytestmark = pytest.mark.zoo


def _builder(case: Case) -> Callable[[], torch.nn.Module]:
    """What the target builds: its factory called with the case's keyword arguments."""
    module, name = case.target.rsplit(":", 1)
    owner = import_file(Path(module)) if module.endswith(".py") else importlib.import_module(module)
    return lambda: getattr(owner, name)(**case.kwargs)


@pytest.mark.parametrize("case", zoo(), ids=lambda c: c.label.replace(" ", "-"))
def test_record_tells_what_the_values_show_and_meta_finds_what_real_finds(case: Case) -> None:
    pytest.importorskip(case.package)
    real, meta, record = built_both_ways(_builder(case))
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

    real_report = run(case.target, kwargs=case.kwargs, inputs=case.inputs)
    meta_report = run(case.target, kwargs=case.kwargs, inputs=case.inputs, meta=True)
    [result] = [r for r in meta_report.results if r.capture is not None]
    assert result.status == "ok", result.error
    assert _findings(meta_report) == _findings(real_report)


def _findings(report) -> list[tuple[str, str | None, str | None, int | None]]:
    return sorted((f.code, f.module, f.file, f.line) for r in report.results for f in r.findings)
