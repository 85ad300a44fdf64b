"""Built-in reference workloads (`zoo:<name>`); `zoo:decoder` is the default target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnprof.errors import UsageError
from attnprof.targets.workload import Inputs, Workload
from attnprof.targets.zoo.models import ZooConfig, ZooTransformer


@dataclass(frozen=True)
class ZooEntry:
    description: str
    config: ZooConfig
    padded: bool  # the inputs carry a key-padding mask
    defaults: dict[str, Any]


ZOO: dict[str, ZooEntry] = {
    "decoder": ZooEntry(
        "causal decoder, SDPA, grouped-query attention (8 query heads, 4 kv heads)",
        ZooConfig(num_heads=8, num_kv_heads=4),
        padded=False,
        defaults={"batch_size": 4, "seq_len": 256},
    ),
    "encoder": ZooEntry(
        "bidirectional encoder, SDPA with a key-padding mask",
        ZooConfig(causal=False),
        padded=True,
        defaults={"batch_size": 4, "seq_len": 256},
    ),
    "gpt": ZooEntry(
        "causal decoder with hand-written matmul + masked_fill + softmax + matmul attention",
        ZooConfig(attention="manual"),
        padded=False,
        defaults={"batch_size": 4, "seq_len": 256},
    ),
}


def random_token_ids(batch_size: int, seq_len: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """Reproducible token ids (a fixed seed, independent of the global RNG)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Causal language-model loss: predict token t+1 from positions <= t."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1)
    )


def load_zoo(target: str) -> Workload:
    name = target.removeprefix("zoo:")
    entry = ZOO.get(name)
    if entry is None:
        raise UsageError(f"unknown zoo workload {name!r}; available: {', '.join(sorted(ZOO))}")
    config = entry.config

    def build_model(device: torch.device, dtype: torch.dtype) -> nn.Module:
        with torch.device(device):
            torch.manual_seed(0)
            model = ZooTransformer(config)
        return model.to(dtype=dtype)

    def make_inputs(batch_size: int, seq_len: int, device: torch.device, dtype: torch.dtype) -> Inputs:
        if seq_len > config.max_seq_len:
            raise UsageError(f"--seq-len {seq_len} exceeds zoo:{name}'s maximum of {config.max_seq_len}")
        ids = random_token_ids(batch_size, seq_len, config.vocab_size, device)
        if not entry.padded:
            return (ids,), {}
        # Every other sequence ends with a quarter of padding, so masks matter.
        lengths = [seq_len - (seq_len // 4 if i % 2 else 0) for i in range(batch_size)]
        padding = torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]
        return (ids,), {"key_padding": padding.to(device)}

    def loss_fn(output: Any, inputs: Inputs) -> torch.Tensor:
        return next_token_loss(output, inputs[0][0])

    return Workload(target, f"zoo-{name}", build_model, make_inputs, loss_fn, dict(entry.defaults), config=config)
