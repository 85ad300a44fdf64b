"""Device selection and synchronisation."""

from __future__ import annotations

import torch

from attnprof.errors import EnvironmentUnsupported, UsageError


def resolve_device(spec: str) -> torch.device:
    """'cpu', 'meta', 'cuda' or 'cuda:N' -> a usable torch.device (exit 4 when absent)."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device must be cpu, meta, cuda or cuda:N, got {spec!r}") from None
    if device.type not in ("cpu", "cuda", "meta"):
        raise UsageError(f"--device must be cpu, meta, cuda or cuda:N, got {spec!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentUnsupported(f"--device {spec}: no CUDA GPU is available on this machine")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise EnvironmentUnsupported(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        device = torch.device("cuda", index)
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a wall-clock reading covers the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
