"""CUDA events faked after torch's real API, for the GPU timing paths on a machine without a GPU:
torch.cuda.Event whose record() reads a clock ticking 1 ms per recorded event."""

from __future__ import annotations

import itertools
from unittest import mock

import pytest
import torch
from torch import nn


def fake_cuda_events(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    real_event = torch.cuda.Event

    def make(enable_timing: bool = False, blocking: bool = False, interprocess: bool = False,
             external: bool = False) -> mock.NonCallableMagicMock:
        event = mock.create_autospec(real_event, instance=True)
        event.record.side_effect = lambda stream=None: setattr(event, "t_ms", float(next(ticks)))
        event.elapsed_time.side_effect = lambda end: end.t_ms - event.t_ms
        return event

    monkeypatch.setattr(torch.cuda, "Event", mock.create_autospec(real_event, side_effect=make))
    monkeypatch.setattr(torch.cuda, "current_stream", mock.create_autospec(torch.cuda.current_stream))


class Pair(nn.Module):
    """Two Linears in a row: the smallest model with a parent and two children."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))
