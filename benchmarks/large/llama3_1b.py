"""A Llama-3.2-1B-shaped model (tied embeddings) (see llama3.py)."""

from llama3 import llama


def build_model():
    return llama("1b")
