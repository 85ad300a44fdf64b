"""The dtype names attnprof accepts on the command line and in files."""

from __future__ import annotations

import torch

from attnprof.errors import UsageError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
            "float64": "fp64", "double": "fp64"}


def canonical_dtype_name(name: str) -> str:
    """'float16' -> 'fp16'; unknown names are a usage error."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TORCH_DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(TORCH_DTYPES)}, got {name!r}")
    return key


def parse_dtype(name: str) -> torch.dtype:
    return TORCH_DTYPES[canonical_dtype_name(name)]


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in TORCH_DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).removeprefix("torch.")
