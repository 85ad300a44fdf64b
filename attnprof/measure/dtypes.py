"""The torch dtype of each dtype name attnprof accepts (the names and their aliases: attnprof.settings)."""

from __future__ import annotations

import torch

from attnprof.settings import canonical_dtype_name

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
def parse_dtype(name: str) -> torch.dtype:
    return TORCH_DTYPES[canonical_dtype_name(name)]


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in TORCH_DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).removeprefix("torch.")
