"""Guessed inputs for forwards that take more than one image: timesteps and labels, encoder-decoder pairs, fixed
lengths, graphs, point clouds, recurrent states; what a guess alone would report; dict inputs in the API."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn as nn

import auditor
from auditor.findings import Severity
from support import FIXTURES, cli, invoke, model_results, run

INPUTS = FIXTURES / "inputs"


def audited(target: str):
    [result] = model_results(run(INPUTS / target))
    assert result.status == "ok", result.error
    assert not [f for f in result.findings if f.severity >= Severity.WARNING], result.findings
    return result


def specs(result) -> str:
    assert result.capture.guessed
    return " ".join(record.spec for record in result.capture.inputs)


def sources(result) -> dict[str, str]:
    return {record.name: record.source for record in result.capture.inputs}


def test_a_diffusion_unet_gets_an_image_and_a_batch_of_integer_timesteps():
    result = audited("diffusion.py:UNet")
    assert specs(result) == "2,3,224,224 int64:2"
    assert sources(result) == {"x": "from Conv2d(3, 8)", "t": "as a timestep (one value per sample)"}


def test_a_dit_gets_the_image_its_patch_table_needs_a_timestep_and_class_labels():
    result = audited("diffusion.py:DiT")
    assert specs(result) == "2,4,8,8 int64:2 int64:2"
    assert sources(result) == {
        "x": "from Conv2d(4, 32) and pos_embed[16]",
        "t": "as a timestep (one value per sample)",
        "y": "as class labels below 11, from Embedding(11, 32)",
    }


def test_a_noise_level_named_sigma_is_a_float_per_sample():
    assert specs(audited("diffusion.py:EDMDenoiser")) == "2,3,224,224 2"


def test_an_encoder_decoder_gets_both_token_sequences():
    assert specs(audited("encoder_decoder.py:Seq2Seq")) == "int64:2,16 int64:2,16"


def test_an_encoder_decoder_with_only_optional_arguments_gets_the_decoder_input_too():
    """Hugging Face style `forward(input_ids=None, attention_mask=None, decoder_input_ids=None, ...)`: the
    arguments between the two are left at None."""
    result = audited("encoder_decoder.py:OptionalSeq2Seq")
    assert specs(result) == "int64:2,16 None int64:2,16"
    assert sources(result)["attention_mask"] == "left at None"


def test_an_audio_encoder_gets_mel_frames_of_the_length_its_position_table_fixes():
    """Whisper-like: a stride-2 convolution before a table of 30 positions, and a shape assertion (no trace)."""
    result = audited("encoder_decoder.py:AudioEncoder")
    assert specs(result) == "2,20,60"
    assert sources(result) == {"mel": "from Conv1d(20, 16) and positional_embedding[30]"}


def test_a_gcn_gets_node_features_for_its_weight_and_a_square_adjacency():
    result = audited("graphs_points.py:GCN")
    assert specs(result) == "2,12 2,2"
    assert sources(result)["x"] == "from `gc1.weight` [12, 8] (mm)"


@pytest.mark.parametrize(("target", "expected"), [("graphs_points.py:PointNet", "2,3,128"), ("graphs_points.py:PointsLast", "2,128,3")])
def test_point_clouds_are_read_through_the_transpose_before_the_first_conv(target, expected):
    [result] = model_results(run(INPUTS / target))
    assert result.status == "ok" and specs(result) == expected


@pytest.mark.parametrize(("target", "expected", "source"), [
    ("positions.py:GPT", "int64:2,32", "from Embedding(100, 16) and pos_emb[32]"),  # added whole: exactly 32
    ("positions.py:LookedUpPositions", "int64:2,16", "from Embedding(100, 16) and wpe[32]"),  # any length up to 32
    ("positions.py:ViT", "2,3,24,24", "from Conv2d(3, 16) and pos_embed[10]"),  # 3x3 patches and a class token
    ("positions.py:Unnamed", "int64:2,8", "from Embedding(100, 16), resized to fit `p` [1, 8, 16]"),
])
def test_a_sequence_length_comes_from_the_table_it_meets(target, expected, source):
    result = audited(target)
    assert specs(result) == expected
    assert [r.source for r in result.capture.inputs] == [source]


def test_an_lstm_tagger_gets_its_initial_state_as_two_arguments():
    result = audited("positions.py:Tagger")
    assert specs(result) == "int64:2,16 2,2,16 2,2,16"
    assert sources(result)["c0"] == "as the initial state of LSTM(8, 16)"


def test_a_table_no_guess_fits_is_never_reported_as_a_residual_mismatch():
    """No guessed image size fills the 4x4 patch table `p`: the failed add is the guess's, not an RES001."""
    [result] = model_results(run(INPUTS / "positions.py:UnnamedPatches"))
    assert result.status == "ok" and not result.findings
    [note] = [n for n in result.capture.notes if n.startswith("guess: ")]
    assert note.startswith("guess: RES001 at ") and "positions.py:" in note
    assert "not reported: the guessed input does not fit `p` [1, 16, 8]" in note


def test_a_finding_another_accepted_guess_does_not_show_is_left_out_and_the_real_one_kept():
    """No guess runs this U-Net cleanly (its bottleneck is wrong at every size); at the first guess, 28x28, its
    skip concatenations also differ, which at 32x32 they do not: only the bottleneck's RES001 is reported."""
    [result] = model_results(run(INPUTS / "broken_unet.py"))
    assert specs(result) == "2,1,28,28"
    assert {(f.code, f.line) for f in result.findings} == {("RES001", 14)}
    [note] = [n for n in result.capture.notes if n.startswith("guess: ")]
    assert "RES004" in note and "absent with another guess the model accepts (2,1,32,32)" in note


def test_the_guess_is_in_the_text_output_and_the_json():
    done = cli(str(INPUTS / "positions.py:GPT"))
    assert done.returncode == 0, done.stderr
    assert "  input guessed: idx long 2x32 from Embedding(100, 16) and pos_emb[32]" in done.stdout.splitlines()
    # the JSON of the same audit, and with --input: in this process (the command's code, without a new interpreter)
    done = invoke(str(INPUTS / "positions.py:GPT"), "--format", "json")
    [result] = json.loads(done.stdout)["results"]
    assert result["capture"]["inputs"] == [
        {"name": "idx", "spec": "int64:2,32", "guessed": True, "source": "from Embedding(100, 16) and pos_emb[32]"}]
    done = invoke(str(INPUTS / "positions.py:GPT"), "--format", "json", "--input", "long:2,32")
    [result] = json.loads(done.stdout)["results"]
    assert result["capture"]["inputs"] == [{"name": "idx", "spec": "int64:2,32", "guessed": False, "source": "--input"}]


# --- dict inputs in the API ---------------------------------------------------------------------------------------
class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 8)
        self.drop = nn.Dropout(0.1)
        self.act = nn.ReLU()

    def forward(self, input_ids=None, attention_mask=None):
        hidden = self.act(self.drop(self.embed(input_ids)))
        return hidden if attention_mask is None else hidden * attention_mask.unsqueeze(-1)


class BatchModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, batch):
        return self.linear(batch["x"])


def test_the_api_binds_a_dict_of_inputs_to_the_forward_by_name():
    ids, mask = torch.randint(0, 40, (2, 5)), torch.ones(2, 5)
    [result] = auditor.audit(TokenModel(), {"input_ids": ids, "attention_mask": mask, "labels": ids}).results
    assert [(r.name, r.spec, r.guessed) for r in result.capture.inputs] == [("input_ids", "int64:2,5", False), ("attention_mask", "2,5", False)]
    assert [f.code for f in result.findings] == ["DRO001"]
    fixed, report = auditor.fix(TokenModel(), {"attention_mask": mask, "input_ids": ids})
    assert [f.code for f in report.results[0].fixes] == ["DRO001"] and not report.results[0].findings
    assert fixed(ids, mask).shape == (2, 5, 8)


def test_assert_clean_takes_a_dict_and_a_forward_of_one_batch_takes_the_dict_itself():
    from auditor.testing import assert_clean

    with pytest.raises(AssertionError, match="DRO001"):
        assert_clean(TokenModel(), {"input_ids": torch.zeros(2, 3, dtype=torch.long)})
    report = assert_clean(BatchModel(), {"x": torch.randn(3, 4), "y": torch.zeros(3)})
    assert report.results[0].capture.inputs[0].name == "batch"


def test_a_dict_that_names_no_parameter_says_so():
    with pytest.raises(ValueError, match=r"no key of the inputs \(ids\) names a parameter of the forward \(input_ids, attention_mask\)"):
        auditor.audit(TokenModel(), {"ids": torch.zeros(2, 3, dtype=torch.long)})


# --- the repository's own call of the model -----------------------------------------------------------------------
class Conditioned(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.embed = nn.Embedding(10, 8)

    def forward(self, x, c, mask=None):
        h = self.conv(x) + self.embed(c)[:, :, None, None]
        return h if mask is None else h * mask


def test_a_call_in_the_repository_gives_its_specs_first_and_names_what_the_forward_does_not():
    """`model(torch.randn(4, 3, 64, 64), labels)` in train.py: the image as made there (at the guesses' batch),
    and `c` read as the labels the call passes."""
    from auditor.loading.guesses import infer_candidates
    from auditor.specs import ArgumentHint, CallHint

    call = CallHint("train.py:41", (ArgumentHint("torch.randn(4, 3, 64, 64)", "4,3,64,64"), ArgumentHint("labels")))
    first = infer_candidates(Conditioned(), call)[0]
    assert str(first) == "2,3,64,64 int64:2"
    assert first.described() == ("x float32 2x3x64x64 as train.py:41 makes it, with a batch of 2; "
                                 "c long 2 as class labels below 10, from Embedding(10, 8)")
    every = CallHint("train.py:41", (ArgumentHint("x", "4,3,64,64"), ArgumentHint("y", "long:4")), (("mask", ArgumentHint("m", "4,1,62,62")),))
    assert str(infer_candidates(Conditioned(), every)[0]) == "4,3,64,64 int64:4 4,1,62,62"  # the optional mask too


def test_a_call_hint_on_the_loaded_model_is_what_the_audit_feeds():
    from auditor.api import live_model
    from auditor.engine import Engine
    from auditor.specs import ArgumentHint, CallHint
    from support import options

    loaded = live_model(Conditioned(), None)
    loaded.call = CallHint("train.py:41", (ArgumentHint("x", "2,3,16,16"), ArgumentHint("y", "long:2")))
    result = Engine(options()).audit_loaded(loaded)
    assert result.status == "ok", result.error
    assert [(r.spec, r.source) for r in result.capture.inputs] == [("2,3,16,16", "as train.py:41 makes it"), ("int64:2", "as train.py:41 makes it")]


def test_float_inputs_take_the_dtype_of_the_layer_they_feed():
    """A half-precision audio encoder gets half-precision features (Whisper's `input_features` follow the model)."""
    from auditor.loading.guesses import infer_candidates

    model = nn.Sequential(nn.Conv1d(20, 8, 3), nn.GELU()).to(torch.bfloat16)
    assert str(infer_candidates(model)[0]) == "bfloat16:2,20,128"


@pytest.mark.parametrize(("target", "expected"), [
    ("conditional.py:Generator", "2,20 int64:2"),  # the Linear's 30 inputs less the label embedding's 10
    ("conditional.py:Discriminator", "2,64 int64:2"),  # 74 less 10: the flattened 8x8 image
    ("conditional.py:NeRF", "2,15 2,9"),  # 25 less the 16 features of `pts` (through its ReLU)
])
def test_an_argument_concatenated_with_a_layer_output_gets_what_that_layer_leaves(target, expected):
    assert specs(audited(target)) == expected


def test_masks_whose_shapes_none_of_the_first_guesses_has_are_fitted_one_argument_at_a_time():
    """The annotated Transformer's `forward(src, tgt, src_mask, tgt_mask)`: its attention unsqueezes the mask
    over the heads, so a (B, L) mask fails; varying the masks one at a time on fake tensors finds (B, 1, L)."""
    result = audited("conditional.py:EncoderDecoder")
    assert specs(result) == "int64:2,16 int64:2,16 bool:2,1,16 bool:2,1,16"


def test_every_argument_departs_from_its_first_proposal_early_in_the_candidates():
    """Many mask proposals must not push the first argument's second proposal out of the candidates."""
    from auditor.loading.guesses import infer_candidates

    sys.path.insert(0, str(INPUTS))
    try:
        from conditional import EncoderDecoder
    finally:
        sys.path.remove(str(INPUTS))
    candidates = [str(c) for c in infer_candidates(EncoderDecoder())]
    assert candidates[0] == "int64:2,16 int64:2,16 bool:2,16 bool:2,16"
    assert "int64:2,128 int64:2,16 bool:2,128 bool:2,128" in candidates[:6]  # the first argument varied, its masks follow


def test_an_argument_named_src_len_holds_valid_lengths():
    """bentrevett's packed-padded seq2seq: `forward(src, src_len, trg)` packs `src` by `src_len`."""

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.rnn = nn.GRU(8, 8)

        def forward(self, src, src_len):
            packed = nn.utils.rnn.pack_padded_sequence(self.embed(src), src_len.cpu())
            return self.rnn(packed)[1]

    from auditor.loading.guesses import guesses
    from auditor.specs import InputSpec

    first = guesses(Packed()).candidates[0]
    assert first.proposals[1].spec == InputSpec("int64", (2,)) and "valid lengths" in first.proposals[1].source
    [result] = auditor.audit(Packed()).results
    assert result.status == "ok", result.error
