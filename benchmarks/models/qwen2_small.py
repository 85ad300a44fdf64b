"""A Qwen2 causal LM from a small config (no download): grouped-query attention, RMSNorm, SwiGLU."""

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

ATTNPROF = {"batch_size": 4, "seq_len": 64}
CONFIG = Qwen2Config(
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def build_model(device, dtype):
    torch.manual_seed(0)
    return Qwen2ForCausalLM(CONFIG).to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randint(0, CONFIG.vocab_size, (batch_size, seq_len), device=device),)
