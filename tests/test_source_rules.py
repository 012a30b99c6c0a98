"""The training-code rules (CLP, TRN, AMP003, LOS, NRM005-006): every fixture under fixtures/training/ yields exactly
the findings its `# expect: CODE` comments mark; they read the source only (no torch, no import of the file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import FIXTURES, cli, expected_marks, run

from auditor.rule import rules_in_scope

# Every built-in source rule (a rule pack's are not this file's business).
SOURCE_CODES = sorted(r.code for r in rules_in_scope("source") if type(r).__module__.startswith("auditor_rules."))
TRAINING = sorted((FIXTURES / "training").glob("*.py"))


@pytest.mark.parametrize("path", TRAINING, ids=[p.stem for p in TRAINING])
def test_training_fixture_findings_match_marks(path: Path) -> None:
    report = run(path, select=SOURCE_CODES)
    assert all(r.status != "error" for r in report.results), [r.error for r in report.results]
    found = {(f.code, f.line) for r in report.results for f in r.findings}
    assert found == expected_marks(path), [f"{f.code}:{f.line} {f.message}" for r in report.results for f in r.findings]
    for finding in (f for r in report.results for f in r.findings):
        assert finding.file is not None and finding.file.endswith(path.name)
        assert finding.module is None and finding.node is None


def test_every_source_rule_has_firing_and_clean_fixtures() -> None:
    fired = {code for path in TRAINING for code, _ in expected_marks(path)}
    assert {"CLP001", "TRN001", "TRN002", "AMP003", "LOS001"} <= set(SOURCE_CODES)
    assert set(SOURCE_CODES) <= fired, sorted(set(SOURCE_CODES) - fired)
    assert any(not expected_marks(p) for p in TRAINING)


def test_loss_wiring_follows_the_model_into_the_module_that_defines_it() -> None:
    """train.py gets `classifier()` from nets.py, whose Sequential ends in nn.Softmax: the finding is on the loss
    line of train.py and names where the softmax is."""
    project = FIXTURES / "training" / "project"
    report = run(project / "train.py", select=SOURCE_CODES)
    findings = [f for r in report.results for f in r.findings]
    assert [(f.code, Path(f.file).name, f.line) for f in findings] == [("LOS001", "train.py", 17)], [f.message for f in findings]
    assert "nets.py:6" in findings[0].message
    nets = run(project / "nets.py", select=SOURCE_CODES)  # the model file alone has no loss: nothing to say
    assert not [f for r in nets.results for f in r.findings]


def test_critic_batchnorm_is_found_in_the_module_that_defines_it() -> None:
    """The penalty is in train.py, the BatchNorm in models.py: the finding is on the penalty's file (the one
    audited) and names the BatchNorm's place; models.py alone has no penalty and no finding."""
    project = FIXTURES / "training" / "gan_project"
    findings = [f for r in run(project / "train.py", select=SOURCE_CODES).results for f in r.findings]
    assert [(f.code, Path(f.file).name, f.line) for f in findings] == [("NRM005", "train.py", 11)], [f.message for f in findings]
    assert "`Discriminator`" in findings[0].message and "models.py:12" in findings[0].message
    assert not [f for r in run(project / "models.py", select=SOURCE_CODES).results for f in r.findings]


def test_source_rules_never_import_torch() -> None:
    """Run every source rule on a script that imports torch: the rules read it, torch stays unimported."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from auditor.options import Options\n"
        "from auditor.rule import default_settings\n"
        "from auditor.source import check_source, parse\n"
        f"paths = {[str(p) for p in TRAINING]!r}\n"
        "total = 0\n"
        "for path in paths:\n"
        "    text = Path(path).read_text()\n"
        "    total += len(check_source(path, text, parse(path, text), Options(settings=default_settings()), []))\n"
        "print(total, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    count, imported = done.stdout.split()
    assert int(count) > 0 and imported == "False", done.stderr


def test_audit_on_torch_free_training_file_never_imports_torch() -> None:
    path = FIXTURES / "training" / "clp001_torch_free_helpers.py"
    script = (
        "import sys\n"
        "from auditor.cli import main\n"
        f"sys.argv = ['audit', {str(path)!r}, '--format', 'json']\n"
        "try:\n    main()\n"
        "except SystemExit as exit:\n    print('exit', exit.code, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().splitlines()[-1] == "exit 1 False", done.stderr
    assert '"code": "CLP001"' in done.stdout and '"line": 11' in done.stdout


def test_script_with_top_level_training_is_read_not_run() -> None:
    path = FIXTURES / "training" / "script_runs_on_import.py"
    report = run(path, select=SOURCE_CODES)  # importing it would raise SystemExit: an error result
    assert [r.status for r in report.results] == ["ok", "skipped"]
    skipped = report.results[1]
    assert skipped.target.endswith("script_runs_on_import.py:model")
    assert "not imported: `raise SystemExit` at line 9 would run on import" in skipped.reason
    assert skipped.reason.endswith("script_runs_on_import.py:model` imports it on purpose")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        # unscale_ in the step: fine; a disabled scaler: fine; accelerate's own clip unscales by itself
        ("scaler.scale(loss).backward()\nscaler.unscale_(opt)\ntorch.nn.utils.clip_grad_value_(m.parameters(), 1)\n", []),
        ("scaler = GradScaler(enabled=False)\nscaler.scale(loss).backward()\nclip_grad_norm_(m.parameters(), 1)\n", []),
        ("scaler.scale(loss).backward()\naccelerator.clip_grad_norm_(m.parameters(), 1)\n", []),
        ("scaler.scale(loss).backward()\nscaler.step(opt)\nscaler.update()\nclip_grad_norm_(m.parameters(), 1)\n", []),
        ("scaler.scale(loss).backward()\ntorch.nn.utils.clip_grad_value_(m.parameters(), 1)\n", [("CLP001", 2)]),
        # label smoothing given as a variable, or ignore_index: not flagged
        ("criterion = nn.CrossEntropyLoss(label_smoothing=args.smoothing)\n", []),
        ("criterion = nn.CrossEntropyLoss(label_smoothing=0.0)\n", [("TRN001", 1)]),
        ("criterion = nn.CrossEntropyLoss(ignore_index=-100)\n", []),
        # OneCycleLR warms up by itself; a warmup variable counts as a warm-up
        ("opt = torch.optim.Adam(p)\nsched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=10)\n", []),
        ("opt = AdamW(p)\nsched = StepLR(opt, 10)\nwarmup_steps = 100\n", []),
        ("opt = torch.optim.SGD(p)\nsched = torch.optim.lr_scheduler.StepLR(opt, 10)\n", []),
        ("opt = torch.optim.AdamW(p)\nsched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0)\n", [("TRN002", 2)]),
        ("import torch.cuda.amp as amp\nwith amp.autocast():\n    pass\n", [("AMP003", 1)]),
        ("with torch.amp.autocast('cuda'):\n    pass\n", []),
    ],
)
def test_source_rule_cases(code: str, expected: list[tuple[str, int]]) -> None:
    from auditor.rule import default_settings
    from auditor.options import Options
    from auditor.selection import Selection
    from auditor.source import check_source, parse

    header = "import torch\nimport torch.nn as nn\nfrom torch.nn.utils import clip_grad_norm_\n"
    text = header + "def step(m, loss, opt, scaler, p, args, accelerator):\n" + "".join(f"    {line}\n" for line in code.splitlines())
    findings = check_source("t.py", text, parse("t.py", text), Options(selection=Selection(select=SOURCE_CODES), settings=default_settings()), [])
    offset = 4  # the header and the def line
    assert sorted((f.code, f.line - offset) for f in findings) == expected, [f.message for f in findings]


# A classification head's loss as Hugging Face's modeling files write it (the Trainer's label_smoothing_factor
# replaces it): TRN001 in the user's own file, nothing in an installed package's.
MODELING = """from torch.nn import CrossEntropyLoss


def sequence_classification_loss(logits, labels, num_labels):
    loss_fct = CrossEntropyLoss()
    return loss_fct(logits.view(-1, num_labels), labels.view(-1))
"""


def _write(path: Path, text: str = MODELING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_source_rules_report_on_the_users_code_not_on_installed_packages(tmp_path: Path) -> None:
    """The same loss in an installed package (pip's site-packages, Debian's dist-packages, as a file or a folder
    target) gets no source finding; in the user's file, and in a package the user keeps in their project, it does."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "fakehf"
    installed = [_write(site / "modeling_fake.py"), _write(tmp_path / "usr" / "lib" / "python3" / "dist-packages" / "fakehf" / "modeling_fake.py")]
    for target in [*installed, site]:
        report = run(target, select=SOURCE_CODES)
        assert [r.status for r in report.results] == ["ok"], target
        assert not [f for r in report.results for f in r.findings], target
    for own in (_write(tmp_path / "project" / "train.py"), _write(tmp_path / "project" / "fakehf" / "modeling_fake.py")):
        report = run(own, select=SOURCE_CODES)
        assert [(f.code, f.file, f.line) for r in report.results for f in r.findings] == [("TRN001", str(own), 5)]


def test_a_folder_target_skips_the_virtual_environment_inside_it(tmp_path: Path) -> None:
    """`audit .` in a project with its `venv/` (and a stray `site-packages`, a `dist-packages`): the user's train.py
    only."""
    _write(tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "fakehf" / "modeling_fake.py")
    _write(tmp_path / "vendor" / "site-packages" / "fakehf" / "modeling_fake.py")
    _write(tmp_path / "debian" / "dist-packages" / "fakehf" / "modeling_fake.py")
    _write(tmp_path / "train.py")
    done = cli(".", "--format", "json", "--select", "TRN001", "--no-cache", cwd=tmp_path)
    report = json.loads(done.stdout)
    assert [r["target"] for r in report["results"]] == ["train.py"]
    assert [(f["code"], f["file"], f["line"]) for f in report["results"][0]["findings"]] == [("TRN001", "train.py", 5)]
    assert done.returncode == 0, done.stderr  # an info, below the default fail-on
