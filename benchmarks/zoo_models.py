"""Hugging Face models for the probe-cost benchmark, built from their published configs' defaults (random
weights, nothing downloaded): `BertConfig()` is bert-base-uncased's shape."""

from transformers import BertConfig, BertModel


def bert_base():
    return BertModel(BertConfig())
