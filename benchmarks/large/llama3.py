"""Llama-3-shaped models built from code with transformers (`build_model()` files for the large-model benchmark).

Each is far larger than this machine's memory with real weights (70B: 282 GB in float32), which is the point:
`audit` measures them on meta first and audits them without materializing a weight.
"""

from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "70b": dict(num_hidden_layers=80, hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8),
    "8b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8),
    "1b": dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
               tie_word_embeddings=True),
}


def llama(size: str) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=128256, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001, **SHAPES[size])
    return LlamaForCausalLM(config)
