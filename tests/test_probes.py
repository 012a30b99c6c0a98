"""`--probe`: the measurements (auditor/probes) and their conclusions (GRD, AMP, CLP002 rules).

Every model under fixtures/probes/ is probed with the captures its header names and must yield exactly the probe
findings its `# expect: CODE` comments mark; the clean_* ones (a He-initialized MLP, a ResNet with BatchNorm, a
transformer encoder, an LSTM with orthogonal init) must yield none. The user's model is never changed.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from auditor.probes.reduced import HEAVY, RoundedKernels
from support import FIXTURES, cli, expected_marks, fixture_header, model_results, run

PROBE_FIXTURES = sorted((FIXTURES / "probes").glob("*.py"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP contention (10x slower otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cases() -> list:
    cases = []
    for path in PROBE_FIXTURES:
        for method in fixture_header(path).get("capture", ["fx"]):
            cases.append(pytest.param(path, method, id=f"{path.stem}[{method}]"))
    return cases


@pytest.mark.parametrize(("path", "method"), _cases())
def test_probe_fixture_findings_match_marks(path: Path, method: str) -> None:
    header = fixture_header(path)
    report = run(path, probe=True, device="cpu", capture=(method,), inputs=header.get("input", []), select=header.get("select", ["GRD", "AMP", "CLP"]))
    models = model_results(report)
    assert models and all(r.status == "ok" for r in models), [r.error for r in report.results]
    for result in models:
        assert result.probes["layers"], "no layer measured"
    found = {(f.code, f.line) for r in report.results for f in r.findings}
    assert found == expected_marks(path), [f"{f.code}:{f.line} [{f.module}] {f.message}" for r in report.results for f in r.findings]


def test_findings_name_the_layer_the_trend_starts_at_and_the_factor() -> None:
    explode = _finding("grd001_exploding_mlp.py", "GRD001", inputs=["8,64"])
    assert explode.module == "body.0" and explode.node == "body_0"
    assert "activations grow x" in explode.message and "per layer" in explode.message
    vanish = _finding("grd002_vanishing_tanh.py", "GRD002", inputs=["8,64"])
    assert vanish.module == "inp" and "shrink" in vanish.message
    nan = _finding("grd003_forward_nan.py", "GRD003", inputs=["8,32"])
    assert "torch.log" in nan.message and "NaN" in nan.message and nan.module == ""
    backward = _finding("grd003_backward_nan.py", "GRD003", inputs=["6,16"])
    assert "backward of torch.sqrt" in backward.message
    overflow = _finding("amp001_large_input.py", "AMP001")
    assert overflow.module == "fc1" and "model input itself" in overflow.message
    functional = _finding("amp001_functional.py", "AMP001", inputs=["4,16,32"])
    assert "matmul" in functional.message and functional.module == ""
    diverge = _finding("amp002_cancellation.py", "AMP002", inputs=["8,32"])
    assert "Tensor.sub" in diverge.message and "bfloat16" in diverge.message


GRADIENT_CASES = [
    "clean_he_mlp", "clean_lstm", "clean_resnet", "clean_small_std_head", "clean_transformer",
    "grd001_exploding_mlp", "grd002_vanishing_tanh", "grd002_default_init_relu",
]


@pytest.mark.parametrize("name", GRADIENT_CASES)
def test_gradient_verdicts_hold_over_seeds_and_batch_sizes(name: str) -> None:
    """The clean models stay quiet and the faulty ones fire, whatever the init seed, the probe's seed and the
    batch size (a batch of one puts BatchNorm in its degenerate case)."""
    path = FIXTURES / "probes" / f"{name}.py"
    expected = {code for code, _ in expected_marks(path) if code in ("GRD001", "GRD002")}
    [spec] = fixture_header(path)["input"]
    kind, _, dims = spec.rpartition(":")
    for seed in (0, 1, 2):
        for batch in (1, 2, 4):
            torch.manual_seed(seed)
            shape = ",".join([str(batch), *dims.split(",")[1:]])
            report = run(path, probe=True, device="cpu", inputs=[f"{kind}:{shape}" if kind else shape], select=["GRD001", "GRD002"], settings={"probe-seed": seed})
            found = [f for r in report.results for f in r.findings]
            assert {f.code for f in found} == expected, (seed, batch, [f"{f.code} [{f.module}] {f.message}" for f in found])


def _finding(name: str, code: str, inputs: list[str] | None = None, **extra):
    extra.setdefault("device", "cpu")
    report = run(FIXTURES / "probes" / name, probe=True, inputs=inputs or [], select=[code], capture=("fx",), **extra)
    found = [f for r in report.results for f in r.findings if f.code == code]
    assert len(found) == 1, [f.message for r in report.results for f in r.findings]
    return found[0]


# --- the user's model is never changed ----------------------------------------------------------------------------
class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def test_probe_leaves_model_rng_and_modes_untouched() -> None:
    from auditor.capture import capture
    from auditor.probes import run_probes

    torch.manual_seed(1)
    model = _Mixed()
    model.eval()
    model.drop.train()  # a mixed state must come back exactly
    x = torch.randn(4, 3, 8, 8)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    graph = capture(model, (x,), {})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())

    measurements = run_probes(model, (x,), graph, {"clip-norm": 0.5})

    assert measurements.layers and measurements.precision is not None and measurements.clipping is not None
    assert measurements.clipping.threshold == 0.5 and measurements.precision.steps > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # parameters and buffers (BatchNorm running stats, counters)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, grads[name]), name
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert random.getstate() == rng[0]
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert torch.equal(torch.get_rng_state(), rng[2])
    assert not any(p.requires_grad is False for p in model.parameters())


def test_batch_of_one_with_batchnorm_is_probed_in_eval_mode() -> None:
    import auditor

    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    report = auditor.audit(model, torch.randn(1, 8), probe=True, select=["GRD", "AMP", "CLP"])
    probes = report.results[0].probes
    assert probes["mode"] == "eval" and any("eval mode" in n for n in probes["notes"])
    assert model.training  # restored


# --- JSON, text, plot -------------------------------------------------------------------------------------------
def _invoke(*args: str):
    """The CLI in-process (a subprocess would pay torch's import again)."""
    from typer.testing import CliRunner

    from auditor.cli import audit_app

    done = CliRunner().invoke(audit_app, list(args))
    done.returncode = done.exit_code  # type: ignore[attr-defined]
    return done


def test_json_probes_shape() -> None:
    done = _invoke(str(FIXTURES / "probes" / "grd003_backward_nan.py"), "--probe", "--input", "6,16", "--format", "json", "--select", "GRD,AMP,CLP", "--clip-norm", "2", "--device", "cpu")
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)  # strict JSON: no NaN/Infinity literals
    [result] = [r for r in document["results"] if r["capture"]]
    probes = result["probes"]
    assert {"device", "mode", "loss", "passes", "seconds", "step_seconds", "layers", "non_finite", "precision", "clipping", "notes"} <= set(probes)
    layer = probes["layers"][0]
    assert {"module", "type", "grad_norm", "weight_norm", "act_mean", "act_std", "in_std", "in_grad_norm"} <= set(layer)
    assert probes["non_finite"]["phase"] == "backward" and probes["non_finite"]["where"] == "gradients"
    assert probes["non_finite"]["line"] == 18 and probes["non_finite"]["file"].endswith("grd003_backward_nan.py")
    assert layer["grad_norm"] == "nan"
    precision = probes["precision"]
    assert precision["autocast_dtype"] == "bfloat16" and precision["float16_max"] == 65504.0
    assert probes["clipping"]["threshold"] == 2.0
    assert "NaN" not in done.stdout and "Infinity" not in done.stdout


def test_text_report_has_sparklines_and_summary() -> None:
    done = _invoke(str(FIXTURES / "probes" / "grd001_exploding_mlp.py"), "--probe", "--input", "8,64", "--select", "GRD", "--device", "cpu")
    assert done.returncode == 1
    out = done.stdout
    assert "error GRD001 [body.0]" in out and "grd001_exploding_mlp.py:12" in out
    assert "probe cpu, train mode, cross_entropy loss" in out
    assert "gradient" in out and "activation" in out and "█" in out and "▁" in out
    assert "float32 max |x|" in out and "gradient norm per step" in out


def test_quiet_hides_probe_tables() -> None:
    done = _invoke(str(FIXTURES / "probes" / "clean_he_mlp.py"), "--probe", "--input", "16,64", "--select", "GRD", "-q")
    assert done.returncode == 0 and "probe" not in done.stdout


def test_clip_threshold_every_step_never_and_suggested() -> None:
    path = FIXTURES / "probes" / "clean_he_mlp.py"
    tight = _clip_findings(path, 1e-4)
    assert len(tight) == 1 and "clips every probe step" in tight[0].message and "would clip only spikes" in tight[0].message
    loose = _clip_findings(path, 1e6)
    assert len(loose) == 1 and "never clips" in loose[0].message
    assert _clip_findings(path, None) == []
    report = run(path, probe=True, device="cpu", inputs=["16,64"], select=["CLP002"])
    clipping = model_results(report)[0].probes["clipping"]
    probes = model_results(report)[0].probes
    assert probes["passes"] == 1 and probes["precision"]["train_steps"] == 1  # bfloat16 on CPU: one AMP step
    assert clipping["threshold"] is None and clipping["recommended"] > 0 and len(clipping["norms"]) == 2  # every step's norm


def _clip_findings(path: Path, threshold: float | None) -> list:
    settings = {"clip-norm": threshold} if threshold is not None else {}
    report = run(path, probe=True, device="cpu", inputs=["16,64"], select=["CLP002"], settings=settings)
    return [f for r in report.results for f in r.findings]


def test_clip_norm_option_and_settings_are_validated(tmp_path) -> None:
    path = str(FIXTURES / "probes" / "clean_he_mlp.py")
    assert "--clip-norm needs --probe" in cli(path, "--clip-norm", "1").stderr
    assert "expected a positive number" in cli(path, "--probe", "--clip-norm", "0").stderr
    config = tmp_path / "pyproject.toml"
    config.write_text("[tool.auditor.settings]\nexplosion-factor = 'big'\n")
    done = cli(path, "--probe", "--config", str(config))
    assert done.returncode == 2 and "explosion-factor" in done.stderr


def test_plot_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "probe.png"
    done = _invoke(str(FIXTURES / "probes" / "grd002_vanishing_tanh.py"), "--probe", "--input", "8,64", "--plot", str(target), "-q", "--fail-on", "warning")
    assert done.returncode == 1, done.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_needs_probe_and_matplotlib(monkeypatch) -> None:
    import importlib.util

    from typer.testing import CliRunner

    from auditor.cli import audit_app

    path = str(FIXTURES / "probes" / "clean_he_mlp.py")
    runner = CliRunner()
    no_probe = runner.invoke(audit_app, [path, "--plot", "x.png"])
    assert no_probe.exit_code == 2 and "--plot needs --probe" in no_probe.stderr
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    missing = runner.invoke(audit_app, [path, "--probe", "--plot", "x.png"])
    assert missing.exit_code == 2
    assert missing.stderr.strip().splitlines() == ["audit: error: --plot needs matplotlib, which is not installed: pip install 'auditor[plot]' (or matplotlib)"]


# --- the API, the engine and the pieces ---------------------------------------------------------------------------
def test_api_probe_and_program_skip(tmp_path) -> None:
    import auditor

    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    report = auditor.audit(model, torch.randn(4, 16), probe=True, select=["GRD", "AMP", "CLP"])
    assert report.findings == [] and report.results[0].probes["loss"] == "cross_entropy"
    program = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(4, 16),)), program)
    result = run(program, probe=True).results[0]
    assert result.probes == {} and any("probes skipped" in n for n in result.capture.notes)


def test_locate_prefers_the_call_then_the_module_then_an_ancestor() -> None:
    from auditor.capture import capture
    from auditor.rule import Location, ProbeContext

    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2, enable_nested_tensor=False)
    model = nn.Sequential(nn.Linear(16, 16), encoder)
    graph = capture(model, (torch.randn(2, 5, 16),), {}, methods=("fx",))
    ctx = ProbeContext(graph=graph, measurements=None, settings={})
    inner = ctx.locate("1.layers.1.linear1")  # inside the opaque encoder node
    assert inner is not None and inner.module == "1" and inner.kind == "module"
    assert ctx.locate("0").module == "0"
    assert ctx.locate("nowhere", ("model.py", 3)) == Location(None, "nowhere", "model.py", 3)


def test_a_trend_compounds_over_layers_and_one_step_is_not_one() -> None:
    from auditor_rules.grd_gradient_probe import largest_trend, trend

    geometric = [(f"l{i}", 10.0 ** -i) for i in range(6)]  # /10 per layer
    i, j, factor, without_largest = largest_trend(geometric, growing=False)
    assert (i, j) == (0, 5) and factor == pytest.approx(1e5) and without_largest == pytest.approx(1e4)
    assert trend(geometric, growing=False, threshold=1000).per_layer == pytest.approx(10.0)
    jump = [("head", 1.0), ("pool", 1e-4), *[(f"l{i}", 1e-4 * 1.5**i) for i in range(6)]]  # one 10^4 step
    assert trend(jump, growing=False, threshold=1000) is None
    assert largest_trend(jump, growing=False)[2] == pytest.approx(1e4)  # the whole change is still measured
    two = [("a", 1.0), ("b", 0.03), ("c", 1e-3), ("d", 1e-3)]  # two steps of ~30x each: 1000x, but 30x without one
    assert trend(two, growing=False, threshold=1000) is None and trend(two, growing=False, threshold=20) is not None
    plateau = [("a", 3.0), ("b", 3.0), ("c", 30.0), ("d", 300.0), ("e", 3000.0), ("f", 3000.0)]
    found = trend(plateau, growing=True, threshold=10)
    assert (found.start, found.end, found.steps) == ("b", "e", 3)  # where the values start and stop moving


def test_whole_tensor_checks() -> None:
    from auditor.probes.tensors import all_finite, max_abs, total_norm

    assert all_finite(torch.randn(100)) and all_finite(torch.zeros(0)) and all_finite(torch.arange(5))
    assert all_finite(torch.full((10,), 3e38))  # the sum overflows, every element is finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        values = torch.randn(100)
        values[37] = bad
        assert not all_finite(values)
    assert max_abs(torch.tensor([1.0, -7.0, 3.0])) == 7.0
    assert math.isnan(max_abs(torch.tensor([1.0, float("nan")])))
    assert total_norm([torch.full((4,), 1.0), torch.full((5,), 2.0)]) == pytest.approx(math.sqrt(4 + 20))


def test_amp_steps_where_loss_scaling_has_work() -> None:
    from auditor.probes.precision import amp_steps

    assert amp_steps(torch.float16, 3) == 3  # GradScaler backs off from 2^16: several steps show it settle
    assert amp_steps(torch.bfloat16, 3) == 1 and amp_steps(torch.bfloat16, 0) == 0


class _KernelDtypes(TorchDispatchMode):
    """Records the operand formats every convolution and matrix product kernel actually receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, torch.dtype]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in HEAVY:
            self.seen |= {(func.overloadpacket.__name__, a.dtype) for a in args if isinstance(a, torch.Tensor)}
        return func(*args, **(kwargs or {}))


def _mixed_model() -> nn.Module:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(4, 8, 3, padding=1)
            self.attention = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.conv(x)).transpose(1, 2)
            return self.head(self.attention(h).mean(1))

    torch.manual_seed(0)
    return Mixed()


def test_reduced_precision_gives_autocasts_values_without_reduced_precision_kernels() -> None:
    """CPU autocast's convolutions, matrix products and attention run in float32 from the same bfloat16 values
    (CPUs without bfloat16 instructions emulate those kernels at 10-30x): outputs and gradients stay autocast's
    (in bfloat16, a rounding apart from a native kernel's, closer to them than float32 is) and gradients as far
    from float32's as autocast's are."""
    from auditor.probes.precision import relative_error

    model, x = _mixed_model(), torch.randn(4, 4, 16)

    def run_once(rounded: bool):
        inputs = x.clone().requires_grad_()
        kernels = _KernelDtypes()
        with kernels, (RoundedKernels() if rounded else contextlib.nullcontext()):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output = model(inputs)
            output.float().square().sum().backward()
        return output, inputs.grad, kernels.seen

    native, native_grad, native_kernels = run_once(rounded=False)
    rounded, rounded_grad, rounded_kernels = run_once(rounded=True)
    inputs = x.clone().requires_grad_()
    reference = model(inputs)
    reference.square().sum().backward()
    assert native.dtype == rounded.dtype == torch.bfloat16
    assert {name for name, dtype in native_kernels if dtype == torch.bfloat16} >= {"convolution", "convolution_backward", "addmm"}
    assert {dtype for _, dtype in rounded_kernels} == {torch.float32}
    assert relative_error(rounded, native) < 0.5 * relative_error(native, reference)  # one bfloat16 rounding apart
    rounding = relative_error(rounded_grad, inputs.grad) / relative_error(native_grad, inputs.grad)
    assert 0.5 < rounding < 2  # the gradients carry autocast's rounding, not float32's


def test_sparkline() -> None:
    from auditor.report.probes import sparkline

    assert sparkline([1.0, 10.0, 100.0, 1000.0]) == "▁▃▆█"
    line = sparkline([1.0, 1.1, None, float("nan")])
    assert set(line[:2]) <= {"▄", "▅"} and line[2:] == " !"  # a flat profile stays mid-height
    assert len(sparkline([float(i + 1) for i in range(500)])) == 48


@pytest.mark.cuda
def test_float16_path_on_cuda() -> None:
    """On a GPU: float16 autocast, GradScaler('cuda'), and the same conclusions as on CPU."""
    clean = run(FIXTURES / "probes" / "clean_resnet.py", probe=True, device="cuda", inputs=["4,3,32,32"], select=["GRD", "AMP", "CLP"])
    [result] = model_results(clean)
    precision = result.probes["precision"]
    assert result.probes["device"] == "cuda" and precision["autocast_dtype"] == "float16"
    assert precision["finite"] and precision["train_steps"] == 3 and precision["skipped_steps"] < 3
    assert result.findings == [], [f.message for f in result.findings]
    overflow = _finding("amp001_large_input.py", "AMP001", device="cuda")
    assert overflow.module == "fc1"
    diverge = _finding("amp002_cancellation.py", "AMP002", inputs=["8,32"], device="cuda")
    assert "float16" in diverge.message
    explode = _finding("grd001_exploding_mlp.py", "GRD001", inputs=["8,64"], device="cuda")
    assert explode.module == "body.0"


def test_probe_and_training_rules_are_documented_and_covered() -> None:
    from auditor.rule import DOC_SECTIONS, PROBE_SETTINGS, all_rules, default_settings

    ours = {r.code: r for r in all_rules() if r.scope == "probe" or r.code in ("CLP001", "TRN001", "TRN002", "AMP003")}
    assert set(ours) == {"GRD001", "GRD002", "GRD003", "AMP001", "AMP002", "AMP003", "CLP001", "CLP002", "TRN001", "TRN002"}
    for rule in ours.values():
        assert [s for s in rule.doc_sections() if s != "Fix safety"] == list(DOC_SECTIONS), rule.code  # Fix safety: rules with a source fix
        assert all(name == name.lower() and "_" not in name for name in rule.settings), rule.code
    fired = {code for path in PROBE_FIXTURES for code, _ in expected_marks(path)}
    assert {r for r, rule in ours.items() if rule.scope == "probe"} - fired == {"CLP002"}  # CLP002: by setting, above
    settings = default_settings()
    for name in ("probe-passes", "probe-steps", "probe-seed", "clip-norm", "explosion-factor", "vanishing-factor", "max-grad-norm", "amp-tolerance", "overflow-limit", "clip-never-factor"):
        assert name in settings, name
    assert set(PROBE_SETTINGS) <= set(settings)


def test_a_model_whose_forward_fails_is_skipped_with_the_reason() -> None:

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 4)

        def forward(self, x):
            return self.b(self.a(x)) + self.a(x)  # [N, 4] + [N, 8]: fails when run (fx traces it)

    model = Broken()
    from auditor.capture import capture
    from auditor.probes import run_probes

    graph = capture(model, (torch.randn(2, 8),), {}, methods=("fx",))
    measurements = run_probes(model, (torch.randn(2, 8),), graph, {})
    assert measurements.skipped and "forward fails" in measurements.skipped and measurements.mode == "train"
    assert measurements.to_json()["skipped"] == measurements.skipped
    assert model.training
