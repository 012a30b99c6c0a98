"""`auditor.testing.assert_clean` in a user's own pytest suite, run by a real pytest (pytester)."""

from __future__ import annotations

import re

import pytest
import torch  # imported before pytester's in-process runs, which restore sys.modules afterwards

from auditor.testing import assert_clean

pytest_plugins = ["pytester"]

USER_MODELS = '''
import torch
import torch.nn as nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.drop = nn.Dropout(0.5)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.act(self.drop(self.fc1(x))))


class GoodClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x))))
'''

USER_TESTS = '''
import torch
from auditor.testing import assert_clean
from models import Classifier, GoodClassifier


def test_faulty_model():
    assert_clean(Classifier(), torch.randn(4, 16))


def test_good_model():
    assert_clean(GoodClassifier(), torch.randn(4, 16))


def test_faulty_model_passes_when_its_rule_is_ignored():
    assert_clean(Classifier(), torch.randn(4, 16), ignore=["DRO001"])


def test_faulty_model_passes_below_fail_on():
    assert_clean(Classifier(), torch.randn(4, 16), fail_on="error")
'''


def test_a_user_suite_fails_on_the_faulty_model_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(models=USER_MODELS, test_models=USER_TESTS)
    dropout_line = next(i for i, text in enumerate((pytester.path / "models.py").read_text().splitlines(), 1) if "nn.Dropout" in text)
    pytester.syspathinsert()
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    # the message is the text report: file:line, severity, code, module, message and the fix
    result.stdout.re_match_lines([
        re.escape(">       assert_clean(Classifier(), torch.randn(4, 16))"),
        re.escape("E       AssertionError: Classifier has 1 audit finding at or above warning:"),
        r"E       Classifier  fx, \d+ nodes",
        re.escape(f"E         models.py:{dropout_line} warning DRO001 [drop] Dropout `drop` feeds Tanh `act`; apply dropout after the activation ("),
        re.escape("E             help: Move the dropout after the activation (fixable with --fix --unsafe-fixes)"),
    ], consecutive=True)
    assert "auditor/testing.py" not in result.stdout.str()  # the traceback ends at the user's assert_clean line


def test_assert_clean_returns_the_report_of_a_clean_model() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    report = assert_clean(model, torch.randn(2, 8))
    assert report.results[0].status == "ok" and report.findings == []


def test_the_message_names_findings_below_fail_on_only_by_count() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.1), torch.nn.Tanh(), torch.nn.Linear(8, 8))
    with pytest.raises(AssertionError) as raised:
        assert_clean(model, torch.randn(4, 8), fail_on="info")
    assert "NRM002" in str(raised.value) and "DRO001" in str(raised.value)
    with pytest.raises(AssertionError) as raised:
        assert_clean(model, torch.randn(4, 8))
    assert "1 audit finding at or above warning (1 below it not shown)" in str(raised.value)
    assert "NRM002" not in str(raised.value)


def test_a_bad_fail_on_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown severity 'warnings'"):
        assert_clean(torch.nn.Linear(2, 2), torch.randn(1, 2), fail_on="warnings")
