"""A small causal decoder with a knob that slows one layer down: a demonstration of `attnprof check`.

With DEMO_EXTRA_MATMULS=N in the environment, the attention of the second block
(`layers.1.attn`) multiplies its output by a hidden x hidden matrix N extra times — the kind of
accidental extra work a refactor can add. Record a baseline with the knob off, turn it on, and
`attnprof check` fails naming that layer:

    attnprof baseline examples/check_demo_model.py --out profiles/demo.json
    DEMO_EXTRA_MATMULS=20 attnprof check examples/check_demo_model.py --baseline profiles/demo.json
"""

import os

import torch

from attnprof.targets.zoo import random_token_ids
from attnprof.targets.zoo.models import SelfAttention, ZooConfig, ZooTransformer

ATTNPROF = {"batch_size": 2, "seq_len": 64, "repeats": 20, "warmup": 3}
CONFIG = ZooConfig(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
SLOW_LAYER = 1


class ExtraWorkAttention(SelfAttention):
    """SelfAttention followed by `extra_matmuls` wasted (but real) matrix products."""

    def __init__(self, config: ZooConfig, extra_matmuls: int) -> None:
        super().__init__(config)
        self.extra_matmuls = extra_matmuls

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x, key_padding)
        weight = self.o_proj.weight
        for _ in range(self.extra_matmuls):
            out = out + 1e-6 * (out @ weight)  # scaled so the output stays finite and nearly unchanged
        return out


def build_model(device, dtype):
    torch.manual_seed(0)
    model = ZooTransformer(CONFIG)
    slow = ExtraWorkAttention(CONFIG, int(os.environ.get("DEMO_EXTRA_MATMULS", "0")))
    slow.load_state_dict(model.layers[SLOW_LAYER].attn.state_dict())
    model.layers[SLOW_LAYER].attn = slow
    return model.to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (random_token_ids(batch_size, seq_len, CONFIG.vocab_size, device),)
