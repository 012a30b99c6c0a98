"""A Llama-3-70B-shaped model (see llama3.py)."""

from llama3 import llama


def build_model():
    return llama("70b")
