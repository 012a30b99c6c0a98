"""Input specs and input resolution: --input, example_inputs(), example_input_array, inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from auditor.errors import TargetError, UsageError
from auditor.loading.guesses import infer_candidates
from auditor.loading.inputs import make_inputs
from auditor.specs import InputSpec, ScalarSpec, TupleSpec, parse_spec, readable_text
from support import FIXTURES, cli, model_results, run

MODELS = FIXTURES / "models"


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("2,3,224,224", InputSpec("float32", (2, 3, 224, 224))),
        ("long:2,128", InputSpec("int64", (2, 128))),
        ("bfloat16:1,16", InputSpec("bfloat16", (1, 16))),
        ("half:4", InputSpec("float16", (4,))),
    ],
)
def test_parse_spec(text, spec):
    assert parse_spec(text) == spec


@pytest.mark.parametrize(
    ("text", "value"),
    [("=0", 0), ("=0.5", 0.5), ("=-1", -1), ("=True", True), ("=None", None), ("='greedy search'", "greedy search")],
)
def test_a_plain_value_is_written_after_an_equals_sign_and_prints_back(text, value):
    spec = parse_spec(text)
    assert spec == ScalarSpec(value) and type(spec.value) is type(value)
    assert parse_spec(str(spec)) == spec
    assert readable_text(str(spec)) == str(spec)  # as the report shows it: a string keeps its spaces
    assert parse_spec("5") == InputSpec("float32", (5,))  # a bare number stays a tensor, as the contract has it


@pytest.mark.parametrize("text", ["=", "=[1]", "=x", "=1+"])
def test_a_plain_value_that_is_no_python_literal_says_how_to_write_one(text):
    with pytest.raises(UsageError, match="a plain value is written =LITERAL"):
        parse_spec(text)


def test_a_plain_value_given_with_input_reaches_the_forward_as_it_is(tmp_path):
    """`--input 2,4 --input =0.25` feeds `forward(x, ratio)` the float 0.25, not a tensor."""
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                                     "        self.fc = nn.Linear(4, 4)\n\n    def forward(self, x, ratio):\n"
                                     "        assert type(ratio) is float\n        return self.fc(x) * ratio\n")
    [result] = run(f"{tmp_path / 'net.py'}:Net", inputs=["2,4", "=0.25"]).results
    assert result.status == "ok", result.error
    assert [(r.name, r.spec) for r in result.capture.inputs] == [("x", "2,4"), ("ratio", "=0.25")]


@pytest.mark.parametrize("text", ["", "2,,3", "2x3", "complex:2,3", "float32:", "2,0,3", "long:-1"])
def test_malformed_spec_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--input"):
        parse_spec(text)


def test_integer_inputs_stay_below_the_smallest_embedding_table():
    model = nn.ModuleDict({"a": nn.Embedding(7, 4), "b": nn.Embedding(100, 4)})
    [tokens] = make_inputs([parse_spec("long:64,64")], model)
    assert tokens.dtype == torch.int64 and int(tokens.max()) < 7 and int(tokens.min()) >= 0
    [bits] = make_inputs([parse_spec("long:64")], nn.Linear(2, 2))
    assert set(bits.tolist()) <= {0, 1}


@pytest.mark.parametrize(
    ("model", "first"),
    [
        (nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), (2, 3, 224, 224)),
        (nn.Sequential(nn.Conv2d(1, 8, 3)), (2, 1, 28, 28)),
        (nn.Sequential(nn.Conv1d(4, 8, 3)), (2, 4, 128)),
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (2, 784)),
        (nn.Sequential(nn.Embedding(30, 8)), (2, 16)),
        (nn.LSTM(5, 7, batch_first=True), (2, 16, 5)),
        (nn.GRU(5, 7), (16, 2, 5)),
        (nn.Sequential(nn.ConvTranspose2d(100, 64, 4)), (2, 100, 1, 1)),  # a DCGAN generator starts from 1x1
        (nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2, enable_nested_tensor=False), (2, 16, 16)),
    ],
)
def test_inference_from_the_first_layer(model, first):
    assert infer_candidates(model)[0].specs[0].shape == first


def test_inference_through_a_sequence_model():
    report = run(MODELS / "sequence.py")
    tagger, time_major = model_results(report)
    assert tagger.status == time_major.status == "ok"
    assert _inferred(tagger) == "int64:2,16"
    assert _inferred(time_major) == "16,2,6"


def test_inferred_sizes_are_tried_until_one_runs():
    class LeNetish(nn.Module):  # its Linear only fits a 32x32 input
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 5)
            self.fc = nn.Linear(6 * 28 * 28, 10)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    import auditor

    [result] = auditor.audit(LeNetish()).results
    assert _inferred(result) == "2,3,32,32"


def test_an_inferred_size_at_which_a_merge_fails_gives_way_to_one_the_whole_forward_runs_on():
    """A ViT with learned position embeddings for 32x32 images: at the first guess (224x224) the add of the
    position embedding fails, which the capture steps over as a finding; that is the guess's fault, not the
    model's, so the size the whole forward runs on is chosen."""
    [result] = model_results(run(FIXTURES / "canonical" / "vit_tiny.py"))
    assert result.status == "ok"
    assert _inferred(result) == "2,3,32,32", result.capture.inputs
    assert not result.findings


def test_a_merge_that_fails_at_every_inferred_size_is_still_reported():
    [result] = model_results(run(FIXTURES / "rules" / "res001_shortcut.py", select=["RES001"]))
    assert result.findings and {(f.code, f.line) for f in result.findings} == {("RES001", 18)}


def test_example_input_array_is_used():
    [result] = model_results(run(MODELS / "lightning_style.py"))
    assert result.status == "ok" and result.capture.nodes == 3


def test_a_mask_is_shaped_after_the_input_it_masks():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x, mask):
            return self.a(x).masked_fill(~mask, 0.0)

    import auditor

    [result] = auditor.audit(Masked()).results
    assert _inferred(result) == "2,3 bool:2,3"
    assert result.capture.inputs[1].source == "as a mask over the positions of `x`, by its name"


def test_an_input_no_layer_reads_is_explained():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return torch.tanh(x) * self.scale

    import auditor

    with pytest.raises(TargetError, match=r"cannot infer input 'x' \(no layer consumes it directly\); pass --input SPEC"):
        auditor.audit(Scaled())


def test_when_no_guess_fits_the_error_lists_only_what_the_first_layer_takes():
    """A token model whose forward rejects every guess: what was tried are token ids, never an image shape."""

    class Picky(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)

        def forward(self, ids):
            if ids.shape[-1] != 7:
                raise ValueError("expected 7 tokens")
            return self.embed(ids)

    import auditor

    with pytest.raises(TargetError, match=r"forward failed on every guessed input \(int64:2,16; int64:2,128; int64:2\)") as raised:
        auditor.audit(Picky())
    assert "224" not in str(raised.value)


def test_a_forward_with_only_optional_arguments_is_fed_its_first():
    """Hugging Face style: `forward(input_ids=None, attention_mask=None)`."""

    class TokenModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(40, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, input_ids=None, attention_mask=None):
            hidden = self.embed(input_ids)
            if attention_mask is not None:
                hidden = hidden * attention_mask.unsqueeze(-1)
            return self.out(hidden)

    assert infer_candidates(TokenModel())[0].specs == [InputSpec("int64", (2, 16))]


# --- per-argument inference, nested specs, sizes -----------------------------------------------------------------
INPUTS = FIXTURES / "inputs"


def _inferred(result) -> str:
    """The guessed inputs as --input specs."""
    assert result.capture.guessed, result.capture.inputs
    return " ".join(record.spec for record in result.capture.inputs)


def test_each_forward_argument_is_inferred_on_its_own():
    results = {r.target.rsplit(":", 1)[-1]: r for r in model_results(run(INPUTS / "sequences.py"))}
    assert all(r.status == "ok" for r in results.values()), [r.error for r in results.values()]
    assert _inferred(results["PairDiscriminator"]) == "2,6,224,224 2,6,224,224"  # two images of half the channels
    assert _inferred(results["LanguageModel"]) == "int64:16,2 (1,2,32),(1,2,32)"  # time-major tokens, (h0, c0)
    assert _inferred(results["PackedClassifier"]) == "int64:2,16 int64:2"


def test_lengths_are_valid_for_the_sequences_they_go_with():
    import sys

    sys.path.insert(0, str(INPUTS))
    try:
        from sequences import PackedClassifier
    finally:
        sys.path.remove(str(INPUTS))
    tokens, lengths = make_inputs([parse_spec("long:4,10"), parse_spec("long:4")], PackedClassifier())
    assert lengths.tolist() == [10, 9, 8, 7] and int(tokens.max()) < 100


def test_a_tuple_argument_is_given_with_parenthesized_groups():
    report = run(f"{INPUTS / 'sequences.py'}:LanguageModel", inputs=["long:5,3", "(1,3,32),(1,3,32)"])
    [result] = report.results
    assert result.status == "ok", result.error
    [tokens, (h0, c0)] = make_inputs([parse_spec("long:5,3"), parse_spec("(1,3,32),(1,3,32)")], nn.Embedding(100, 4))
    assert tokens.shape == (5, 3) and h0.shape == c0.shape == (1, 3, 32)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("(1,2,32),(1,2,32)", TupleSpec((InputSpec("float32", (1, 2, 32)), InputSpec("float32", (1, 2, 32))))),
        ("((1,4),(long:1,4)),(2)", TupleSpec((TupleSpec((InputSpec("float32", (1, 4)), InputSpec("int64", (1, 4)))), InputSpec("float32", (2,))))),
    ],
)
def test_nested_specs_parse_and_print_back(text, spec):
    assert parse_spec(text) == spec
    assert parse_spec(str(spec)) == spec


@pytest.mark.parametrize("text", ["(1,2", "(1,2),", "(1,2)(3)", "()", "(1,2),3", "((1)"])
def test_malformed_tuple_specs_say_how_to_write_one(text):
    with pytest.raises(UsageError, match=r"a tuple is written \(SPEC\),\(SPEC\)"):
        parse_spec(text)


def test_an_input_too_large_to_exist_is_refused_before_anything_runs():
    with pytest.raises(UsageError, match=r"input too large: 3.55 PiB, more than this machine's memory"):
        parse_spec("100000,100000,100000")
    done = cli("tests/fixtures/models/discovery.py:Net", "--input", "100000,100000,100000")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "audit: error: --input '100000,100000,100000': input too large: 3.55 PiB, more than this machine's memory "
        f"({done.stderr.split('memory (')[1].split(')')[0]}); pass a smaller shape"]


def test_a_slow_first_guess_is_replaced_by_the_shape_that_fits_on_fake_tensors(monkeypatch):
    """A CIFAR-sized network gets no real forward at 224x224 once the first try runs long (here: at once)."""
    import auditor
    import auditor.prepare

    seen: list[tuple[int, ...]] = []

    class CifarNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    def record(module, args):
        if type(args[0]) is torch.Tensor:  # a real forward, not a fake one
            seen.append(tuple(args[0].shape))

    model = CifarNet()
    model.conv.register_forward_pre_hook(record)
    monkeypatch.setattr(auditor.prepare, "FIRST_TRY_SECONDS", 0.0)
    [result] = auditor.audit(model).results
    assert _inferred(result) == "2,3,32,32"
    assert set(seen) == {(2, 3, 32, 32)}  # the interrupted first try never ran; only the shape that fits did


def test_a_merge_that_fails_at_every_size_costs_one_real_guess_once_the_first_try_runs_long(monkeypatch):
    """No candidate fits even on fake tensors (the residual add is wrong at every size): the first guess that
    runs up to the failing add is audited, without real forwards of the other, larger guesses."""
    import auditor
    import auditor.prepare

    seen: list[tuple[int, ...]] = []

    class Widening(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + x  # 8 channels + 3 channels: fails whatever the size

    def record(module, args):
        if type(args[0]) is torch.Tensor:  # a real forward, not a fake one
            seen.append(tuple(args[0].shape))

    model = Widening()
    model.conv.register_forward_pre_hook(record)
    monkeypatch.setattr(auditor.prepare, "FIRST_TRY_SECONDS", 0.0)
    [result] = auditor.audit(model).results
    assert [f.code for f in result.findings] == ["RES001"]
    assert _inferred(result) == "2,3,224,224"
    assert set(seen) == {(2, 3, 224, 224)}
