"""A fixed reference workload timed between the steps: a measure of how fast the machine runs now.

A shared machine's speed wanders by several percent over seconds to minutes (neighbours on the
host, frequency, cache pressure), and neither wall time nor CPU time is immune: this is why two
runs of the same code disagree by more than a CI gate's threshold. The reference probe is a
small, fixed computation of the same kind as a transformer step (linear layers, GELU, softmax),
independent of the user's model, timed right after each plain step. The same drift slows both,
so dividing a step by its neighbouring probe cancels most of it; `attnprof check` compares
these ratios when both profiles carry probe samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# Bump when the probe's work changes: probes of different versions are not comparable.
REFERENCE_VERSION = 1
_WIDTH = 128
_TOKENS = 128
_LAYERS = 8


def reference_probe(device: torch.device) -> Callable[[], None]:
    """The probe for `device`: the same seeded weights and input on every run, fp32, no grad."""
    generator = torch.Generator().manual_seed(REFERENCE_VERSION)
    layer = nn.Linear(_WIDTH, _WIDTH)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(_WIDTH, _WIDTH, generator=generator) / _WIDTH**0.5)
        layer.bias.zero_()
    layer = layer.to(device)
    start = torch.randn(_TOKENS, _WIDTH, generator=generator).to(device)

    def run() -> None:
        with torch.no_grad():
            hidden = start
            for _ in range(_LAYERS):
                hidden = nn.functional.gelu(layer(hidden)).softmax(-1)

    return run
