"""Opt-in markers: slow, zoo and integrations tests run only when asked; cuda tests only where a GPU is present.
Every test audits for real: the result cache is off (tests/test_cache.py turns it on for itself)."""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

from support import forget_user_modules

os.environ["AUDIT_NO_CACHE"] = "1"  # inherited by every `audit` a test starts


@pytest.fixture(autouse=True)
def _user_modules_forgotten() -> Iterator[None]:
    """What a test imports from the fixtures or its temporary folder (`import_file(canonical/unet.py)` registers
    `unet`) is forgotten after it: under pytest-xdist the next test in the worker may be another fixture's
    `from unet import UNet`, which would get this one (a test_reach failure in a clean-clone CI run)."""
    before = set(sys.modules)
    yield
    forget_user_modules(before)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")
    parser.addoption("--run-zoo", action="store_true", help="run the model-zoo tests (needs the zoo extra)")
    parser.addoption("--run-integrations", action="store_true", help="run the Lightning and Trainer callback tests (needs the lightning and transformers extras)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {
        "slow": (config.getoption("--run-slow"), "slow: pass --run-slow"),
        "zoo": (config.getoption("--run-zoo"), "zoo: pass --run-zoo (and install .[zoo])"),
        "integrations": (config.getoption("--run-integrations"), "integrations: pass --run-integrations (and install .[lightning,transformers])"),
    }
    cuda = None
    for item in items:
        for marker, (enabled, reason) in skips.items():
            if item.get_closest_marker(marker) is not None and not enabled:  # not keywords: folder names are keywords too
                item.add_marker(pytest.mark.skip(reason=reason))
        if "cuda" in item.keywords:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="cuda: no CUDA device"))
