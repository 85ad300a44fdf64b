"""Attention FLOPs on a shape matrix: attnprof vs torch's FlopCounterMode vs brute force.

For every case the same q, k, v and mask run through three attention paths — SDPA with the
flash backend (the CPU default), SDPA with the math backend, and hand-written
matmul → mask → softmax → matmul — and, as a dry run, the math path on the meta device.
On meta, the math path counts masks from their replayed values and the flash path is the
route `attnprof profile --device meta` takes (SDPA sent to the CPU flash kernel).
Each path is counted by attnprof's CostCounter and by FlopCounterMode in the same process.
The reference is brute force: 4·D times the number of True entries of the fully
materialised (batch, heads, q_len, kv_len) keep mask.

    python -m benchmarks.accounting_matrix            # prints a markdown table
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from attnprof.measure.accounting import CostCounter
from attnprof.measure.dry_run import FlashOnMeta
from attnprof.measure.scopes import ModuleScopes


@dataclass
class Case:
    name: str
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    keep: Callable[[], torch.Tensor | None]  # boolean (.., q_len, kv_len) mask; None = no mask
    causal: bool = False  # SDPA's is_causal (top-left) instead of a mask


def _rows_cols(q_len: int, kv_len: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(q_len)[:, None] + offset, torch.arange(kv_len)[None, :]


def _causal(q_len: int, kv_len: int, window: int | None = None) -> torch.Tensor:
    rows, cols = _rows_cols(q_len, kv_len, kv_len - q_len)
    keep = cols <= rows
    return keep & (cols > rows - window) if window else keep


def _padding(batch: int, kv_len: int) -> torch.Tensor:
    lengths = torch.tensor([kv_len - (kv_len // 4) * (b % 2) for b in range(batch)])
    return (torch.arange(kv_len)[None, :] < lengths[:, None])[:, None, None, :]


CASES = [
    Case("full", 2, 8, 8, 256, 256, 64, lambda: None),
    Case("causal (is_causal)", 2, 8, 8, 256, 256, 64, lambda: None, causal=True),
    Case("causal GQA 8q/2kv (is_causal)", 2, 8, 2, 256, 256, 64, lambda: None, causal=True),
    Case("causal mask", 2, 8, 8, 256, 256, 64, lambda: _causal(256, 256)),
    Case("sliding window 64", 2, 8, 8, 256, 256, 64, lambda: _causal(256, 256, window=64)),
    Case("padding (1/4 of every other row)", 4, 8, 8, 256, 256, 64, lambda: _padding(4, 256)),
    Case("causal + padding", 4, 8, 8, 256, 256, 64, lambda: _causal(256, 256) & _padding(4, 256)),
    Case("decode q=1, cache 1024", 4, 8, 2, 1, 1024, 64, lambda: _causal(1, 1024)),
    Case("chunked prefill q=64, kv=512", 2, 8, 2, 64, 512, 64, lambda: _causal(64, 512)),
]


def brute_force_flops(case: Case) -> int:
    keep = case.keep()
    if case.causal:
        keep = torch.ones(case.q_len, case.kv_len, dtype=torch.bool).tril()
    if keep is None:
        keep = torch.ones(case.q_len, case.kv_len, dtype=torch.bool)
    full = keep.expand(case.batch, case.heads, case.q_len, case.kv_len)
    return 4 * case.head_dim * int(full.sum())


def _sdpa(backend: SDPBackend, mask: torch.Tensor | None, causal: bool, gqa: bool) -> Callable[..., torch.Tensor]:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        on_device = mask.to(q.device) if mask is not None else None  # inside the count, as a model would
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=on_device, is_causal=causal, enable_gqa=gqa)

    return attend


def _hand_written(mask: torch.Tensor | None, causal: bool) -> Callable[..., torch.Tensor]:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if k.shape[1] != q.shape[1]:
            repeats = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        keep = mask.to(q.device) if mask is not None else None
        if causal:
            keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    return attend


class Run(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(*args)


def attnprof_flops(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, dry_run: bool = False) -> int:
    model = Run(fn)
    route = FlashOnMeta() if dry_run else contextlib.nullcontext()
    with torch.no_grad(), ModuleScopes(model) as scopes, CostCounter(scopes) as counter, route:
        model(*inputs)
    return sum(info.flops for cost in counter.per_module.values() for info in cost.attention)


def flop_counter_flops(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops()


def inputs(case: Case, device: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    shapes = [(case.batch, case.heads, case.q_len, case.head_dim)] + [
        (case.batch, case.kv_heads, case.kv_len, case.head_dim)
    ] * 2
    return [torch.randn(*shape, device=device) for shape in shapes]


def paths(case: Case) -> dict[str, Callable[..., torch.Tensor]]:
    mask = case.keep()
    gqa = case.kv_heads != case.heads
    return {
        "sdpa flash": _sdpa(SDPBackend.FLASH_ATTENTION, mask, case.causal, gqa),
        "sdpa math": _sdpa(SDPBackend.MATH, mask, case.causal, gqa),
        "hand-written": _hand_written(mask, case.causal),
    }


def human(flops: int) -> str:
    return f"{flops / 1e6:,.1f} M"


def main() -> None:
    torch.set_num_threads(1)
    header = ("| case | brute force | attnprof flash / math / hand / meta math / meta flash | exact "
              "| FlopCounterMode flash / math / hand | FlopCounterMode error |")
    print(header)
    print("| --- | ---: | ---: | :---: | ---: | ---: |")
    started = time.perf_counter()
    for case in CASES:
        expected = brute_force_flops(case)
        compared = paths(case)
        ours = [attnprof_flops(fn, *inputs(case, "cpu")) for fn in compared.values()]
        ours.append(attnprof_flops(compared["sdpa math"], *inputs(case, "meta")))
        ours.append(attnprof_flops(compared["sdpa flash"], *inputs(case, "meta"), dry_run=True))
        theirs = [flop_counter_flops(fn, *inputs(case, "cpu")) for fn in compared.values()]
        exact = all(value == expected for value in ours)
        worst = max(abs(value - expected) / expected for value in theirs)
        print(f"| {case.name} | {human(expected)} | {' / '.join(human(v) for v in ours)} | "
              f"{'yes' if exact else 'NO'} | {' / '.join(human(v) for v in theirs)} | {100 * worst:.0f}% |")
    print(f"\n({time.perf_counter() - started:.1f} s, torch {torch.__version__}, 1 thread)")


if __name__ == "__main__":
    main()
