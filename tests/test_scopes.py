"""The module stack attributes forward and backward ops exactly, q/k/v siblings included."""

from __future__ import annotations

import torch
from torch import nn

from attnprof.measure.accounting import CostCounter
from attnprof.measure.scopes import ModuleScopes


class SharedInputAttention(nn.Module):
    """q, k and v read the same input: the case ModuleTracker gets wrong in backward."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 16, bias=False)
        self.k = nn.Linear(8, 4, bias=False)
        self.v = nn.Linear(8, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x).sum() + self.k(x).sum() + self.v(x).sum()


def test_qkv_backward_flops_are_attributed_to_each_projection() -> None:
    model = SharedInputAttention()
    x = torch.randn(3, 8, requires_grad=True)
    with ModuleScopes(model) as scopes, CostCounter(scopes) as counter:
        model(x).backward()
    costs = counter.per_module
    # Forward: a (3x8) @ (8xN) matmul is 2*3*8*N FLOPs -> 768, 192, 96 for N = 16, 4, 2.
    assert [costs[n].flops for n in ("q", "k", "v")] == [768, 192, 96]
    # Backward: grad wrt input (3xN @ Nx8) and grad wrt weight (Nx3 @ 3x8), each 2*3*8*N -> 2x forward.
    assert [costs[n].backward_flops for n in ("q", "k", "v")] == [1536, 384, 192]
    assert costs[""].backward_flops == 0


def test_scopes_close_and_report_order() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    seen: list[tuple[str, str, str]] = []

    class Recorder:
        def on_enter(self, name: str, phase: str) -> None:
            seen.append(("enter", name, phase))

        def on_exit(self, name: str, phase: str) -> None:
            seen.append(("exit", name, phase))

    with ModuleScopes(model) as scopes:
        scopes.add_listener(Recorder())
        model(torch.randn(1, 2))
        assert scopes.current() == ""
    assert scopes.order == ["", "0", "1", "1.0", "1.1"]
    assert seen[0] == ("enter", "", "forward") and seen[-1] == ("exit", "", "forward")
    assert len(seen) == 10
