"""Known contents of meta tensors: replayed from constants, forgotten when something unknown writes."""

from __future__ import annotations

import torch

from attnprof.measure.meta_values import MetaValues, ValueRecorder


def test_masks_built_from_constants_are_known() -> None:
    values = MetaValues()
    with ValueRecorder(values):
        keep = torch.ones(3, 5, dtype=torch.bool, device="meta").tril(2)
        additive = torch.zeros(3, 5, device="meta").masked_fill(~keep, float("-inf"))
        moved = (torch.arange(5)[None, :] < torch.tensor([[5], [3]])).to("meta")  # built on CPU, moved
    assert torch.equal(values.value(keep), torch.ones(3, 5, dtype=torch.bool).tril(2))
    known = values.value(additive)
    assert known is not None and int(torch.isinf(known).sum()) == 3  # 2 + 1 hidden keys above the band
    assert values.value(moved).tolist() == [[True] * 5, [True] * 3 + [False] * 2]


def test_random_data_and_unknown_writes_stay_unknown() -> None:
    values = MetaValues()
    with ValueRecorder(values):
        noise = torch.randn(4, device="meta")
        mask = torch.zeros(4, device="meta")
        mask.add_(noise)  # an unknown value written into a known one
    assert values.value(noise) is None
    assert values.value(mask) is None


def test_large_tensors_are_not_replayed() -> None:
    values = MetaValues(max_elements=10)
    with ValueRecorder(values):
        small = torch.ones(10, device="meta")
        large = torch.ones(11, device="meta")
    assert values.value(small) is not None and values.value(large) is None
    cpu = torch.ones(2)
    assert values.value(cpu) is cpu  # off meta a tensor is its own value
