"""Auditing models inside a user's own test suite: `assert_clean(model, inputs)` fails the test like any assert.

    from auditor.testing import assert_clean

    def test_model_is_clean():
        assert_clean(Net(), torch.randn(2, 3, 32, 32))
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from auditor.findings import Report, Severity
from auditor.gate import failure_message, threshold


def assert_clean(
    model: Any,
    example_inputs: Any = None,
    *,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    fail_on: str | Severity = "warning",
    probe: bool = False,
    settings: dict[str, Any] | None = None,
    loss: Callable[[Any, Any], Any] | None = None,
) -> Report:
    """Audit `model` (as `auditor.audit`) and raise AssertionError listing every finding at or above `fail_on`
    (default "warning": in a test, a warning is worth failing on) as the text report shows it. Returns the
    report when the model passes. A model that cannot be audited raises `auditor.errors.TargetError`."""
    from auditor.api import audit

    __tracebackhide__ = True  # pytest shows the user's assert_clean line, not ours
    level = threshold(fail_on)
    report = audit(model, example_inputs, probe=probe, select=select, ignore=ignore, settings=settings, loss=loss)
    message = failure_message(report, level, type(model).__name__)
    if message is not None:
        raise AssertionError(message)
    return report
