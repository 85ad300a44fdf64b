"""The attention backends attnprof knows: one table, read by every part that chooses, checks or recognises one.

A backend is one of PyTorch's scaled_dot_product_attention kernels, or a way of running attention
instead of SDPA: FlexAttention (SDPA calls run as compiled `flex_attention` with block masks,
measure/flex.py) and transformers' eager attention (hf: targets only). Each entry says what the
settings, plans, sweeps, the doctor, the trace reader and the cost model need to know about it.
To add one, add an entry here and nothing else, unless it needs code that is genuinely new (a
kernel-argument reader in measure/attention_ops.py for a new aten op). docs/architecture.md,
"Extending attnprof", walks through it.

No torch import here: the CLI's help and the record loaders read this table without torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from attnprof.errors import UsageError

AUTO = "auto"  # let PyTorch choose the kernel: no backend is forced


@dataclass(frozen=True)
class Backend:
    name: str  # as written in settings, plans, profiles and on the command line
    sdp_backend: str | None  # the member of torch.nn.attention.SDPBackend that forces it; None: not an SDPA kernel
    devices: tuple[str, ...]  # device types PyTorch implements it on ("cpu", "cuda")
    materialises_scores: bool  # holds the (q_len, kv_len) score matrix: memory grows with S²
    kernel_patterns: tuple[str, ...]  # lower-case substrings of its kernel / aten op names in traces
    hf_attn_implementation: str  # transformers' attn_implementation that routes through it
    swept_on_gpu: bool = True  # part of the default `attnprof fit` sweep on a GPU
    label: str = ""  # how messages name it
    min_capability: tuple[int, int] | None = None  # the CUDA compute capability it needs
    cuda_dtypes: tuple[str, ...] = ()  # the input precisions it takes on a GPU (empty: any)
    cpu_backward: bool = True  # runs backward (train mode) on a CPU
    hf_only: bool = False  # exists only as a transformers attention implementation


# Order matters for trace matching: cuDNN's SDPA kernels are named
# "cudnn_generated_fort_native_sdpa_…flash…", so cudnn is matched before flash.
BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="cudnn",
        sdp_backend="CUDNN_ATTENTION",
        devices=("cuda",),
        materialises_scores=False,
        kernel_patterns=("cudnn_attention", "cudnn_generated_fort_native_sdpa", "cudnn_sdpa", "sdpa_cudnn"),
        hf_attn_implementation="sdpa",
        swept_on_gpu=False,
        label="cuDNN attention",
        min_capability=(9, 0),
        cuda_dtypes=("fp16", "bf16"),
    ),
    Backend(
        name="flash",
        sdp_backend="FLASH_ATTENTION",
        devices=("cpu", "cuda"),
        materialises_scores=False,
        kernel_patterns=("flash_attention", "flash_fwd", "flash_bwd", "pytorch_flash"),
        hf_attn_implementation="sdpa",
        label="FlashAttention",
        min_capability=(8, 0),
        cuda_dtypes=("fp16", "bf16"),
    ),
    Backend(
        name="efficient",
        sdp_backend="EFFICIENT_ATTENTION",
        devices=("cuda",),
        materialises_scores=False,
        kernel_patterns=("efficient_attention", "fmha_cutlass", "memeffattention", "mem_eff"),
        hf_attn_implementation="sdpa",
    ),
    Backend(
        name="math",
        sdp_backend="MATH",
        devices=("cpu", "cuda"),
        materialises_scores=True,
        kernel_patterns=("_scaled_dot_product_attention_math",),
        hf_attn_implementation="sdpa",
    ),
    Backend(
        name="flex",
        sdp_backend=None,
        devices=("cpu", "cuda"),
        materialises_scores=False,
        kernel_patterns=("flex_attention",),
        hf_attn_implementation="flex_attention",
        swept_on_gpu=False,
        label="FlexAttention",
        cpu_backward=False,  # torch: "FlexAttention does not support backward on CPU"
    ),
    Backend(
        name="eager",
        sdp_backend=None,
        devices=("cpu", "cuda"),
        materialises_scores=True,
        kernel_patterns=(),
        hf_attn_implementation="eager",
        swept_on_gpu=False,
        label="transformers eager attention",
        hf_only=True,
    ),
)

BY_NAME: dict[str, Backend] = {backend.name: backend for backend in BACKENDS}
# What "auto" runs on a CPU: PyTorch picks its flash kernel there, ~3x faster than math.
CPU_DEFAULT = "flash"
# The reference kernel every other backend falls back to (the doctor treats its failure as fatal).
REFERENCE = "math"
# Names a setting or plan may hold, in the order help texts list them.
NAMES: tuple[str, ...] = (AUTO, "math", "flash", "efficient", "cudnn", "flex", "eager")
assert set(NAMES) == {AUTO, *BY_NAME}, "NAMES must list every backend of BACKENDS"
# The SDPA kernels (sdpa_kernel forces them), and every backend a plan may choose.
SDPA_NAMES: tuple[str, ...] = tuple(name for name in NAMES if name != AUTO and BY_NAME[name].sdp_backend)
PLAN_NAMES: tuple[str, ...] = tuple(name for name in NAMES if name != AUTO)


def get(name: str) -> Backend:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown attention backend {name!r}; known: {', '.join(NAMES)}") from None


def runs_on(name: str, device_type: str) -> bool:
    """Whether PyTorch implements backend `name` on a device of this type ("auto" runs anywhere)."""
    return name == AUTO or device_type in get(name).devices


def names_on(device_type: str) -> tuple[str, ...]:
    """The SDPA backends (not "auto") PyTorch implements on this device type."""
    return tuple(name for name in SDPA_NAMES if device_type in BY_NAME[name].devices)


def default_sweep(device_type: str) -> tuple[str, ...]:
    """The backends `attnprof fit` measures when none are named: every one on a CPU, on a GPU
    those marked swept_on_gpu."""
    return tuple(name for name in names_on(device_type) if device_type == "cpu" or BY_NAME[name].swept_on_gpu)


def unsupported_reason(
    name: str, device_type: str, capability: tuple[int, int] | None, dtype: str, train: bool = False
) -> str | None:
    """Why backend `name` cannot run at `dtype` on this device (in train mode: backward too), or
    None when it can."""
    if name == AUTO:
        return None
    backend = get(name)
    if device_type == "cpu" and "cpu" not in backend.devices:
        return f"only the {' and '.join(names_on('cpu'))} SDPA kernels run on CPU"
    if device_type == "cuda" and backend.min_capability is not None:
        major, minor = backend.min_capability
        wrong_dtype = bool(backend.cuda_dtypes) and dtype not in backend.cuda_dtypes
        if (capability or (0, 0)) < backend.min_capability or wrong_dtype:
            return (
                f"{backend.label} needs compute capability >= {major}.{minor} and "
                f"{'/'.join(backend.cuda_dtypes)} inputs"
            )
    if train and device_type == "cpu" and not backend.cpu_backward:
        return f"{backend.label} has no backward on CPU (train mode)"
    return None


def materialises_scores(name: str) -> bool:
    """Whether the backend holds score matrices; "auto" and unknown backends are assumed to."""
    backend = BY_NAME.get(name)
    return backend is None or backend.materialises_scores


def backend_of_kernel(kernel_name: str) -> str | None:
    """The backend a kernel or aten op name belongs to, or None."""
    lowered = kernel_name.lower()
    for backend in BACKENDS:
        if any(pattern in lowered for pattern in backend.kernel_patterns):
            return backend.name
    return None


def sdp_backend(name: str) -> Any:
    """The torch.nn.attention.SDPBackend member that forces SDPA kernel `name`."""
    from torch.nn.attention import SDPBackend

    member = get(name).sdp_backend
    if member is None:
        raise UsageError(f"{name} is not an SDPA kernel")
    return getattr(SDPBackend, member)


def kernel_scope(name: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of context managers that force SDPA kernel `name` (nothing for "auto" and the
    backends that are not SDPA kernels: measure/flex.attention_scope runs those)."""
    if name == AUTO or get(name).sdp_backend is None:
        return contextlib.nullcontext
    from torch.nn.attention import sdpa_kernel

    chosen = sdp_backend(name)
    return lambda: sdpa_kernel(chosen)
