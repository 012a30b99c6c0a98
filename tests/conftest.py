"""Opt-in markers: slow and zoo tests run only when asked; cuda tests only where a GPU is present."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow")
    parser.addoption("--run-zoo", action="store_true", help="run the model-zoo tests (needs the zoo extra)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {
        "slow": (config.getoption("--run-slow"), "slow: pass --run-slow"),
        "zoo": (config.getoption("--run-zoo"), "zoo: pass --run-zoo (and install .[zoo])"),
    }
    cuda = None
    for item in items:
        for marker, (enabled, reason) in skips.items():
            if marker in item.keywords and not enabled:
                item.add_marker(pytest.mark.skip(reason=reason))
        if "cuda" in item.keywords:
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="cuda: no CUDA device"))
