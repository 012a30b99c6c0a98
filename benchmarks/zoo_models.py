"""Hugging Face models for the probe-cost benchmark, built from their published configs' defaults (random
weights, nothing downloaded): `BertConfig()` is bert-base-uncased's shape."""

from transformers import BertConfig, BertModel


def bert_base():
    return BertModel(BertConfig())


def gpt2():
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(GPT2Config())


def t5_small_encoder():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config())


def swin_tiny():
    from transformers import SwinConfig, SwinModel

    return SwinModel(SwinConfig())
