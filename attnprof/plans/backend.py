"""Attention backend plans: an `sdpa_kernel` scope around forward (or, for flex, a scope that runs
SDPA calls as flex_attention), transformers switched to the backend's attention implementation
(sdpa, flex_attention or eager), and hand-written matmul-softmax-matmul attention replaced by its
adapter's SDPA forward where that reproduces the module's own outputs on the example inputs."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from attnprof import backends
from attnprof.errors import EnvironmentUnsupported
from attnprof.measure.flex import attention_scope
from attnprof.plans.calls import ModuleCall
from attnprof.plans.discover import AttentionSite, Discovery
from attnprof.plans.records import NotApplied
from attnprof.plans.scope import add_forward_scope


def check_backend_runs(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """Run a tiny SDPA under an SDPA kernel; a kernel this device lacks is exit 4, not a crash later.
    (flex and eager are not probed: flex would pay a compile for it, eager is transformers' code.)"""
    if backends.get(backend).sdp_backend is None:
        return
    q = torch.zeros(1, 1, 8, 64, device=device, dtype=dtype)
    try:
        with backends.kernel_scope(backend)():
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EnvironmentUnsupported(f"attention backend {backend} does not run on {device} ({reason})") from None


def apply_backend(
    model: nn.Module, found: Discovery, backend: str, calls: dict[str, ModuleCall]
) -> tuple[list[str], list[NotApplied]]:
    applied: list[str] = []
    missed: list[NotApplied] = []
    config = getattr(model, "config", None)
    entry = backends.get(backend)
    implementation = entry.hf_attn_implementation
    current = getattr(config, "_attn_implementation", implementation)
    if entry.hf_only and not hasattr(model, "set_attn_implementation"):
        reason = f"{entry.label} is an implementation of transformers models; this is not one"
        return [], [NotApplied("", type(model).__name__, "backend", reason)]
    if hasattr(model, "set_attn_implementation"):
        if current != implementation:
            previous = config._attn_implementation
            model.set_attn_implementation(implementation)
            applied.append(f"transformers attention implementation: {implementation} (was {previous})")
        calls = {}  # transformers' implementation is the attention: nothing hand-written to replace
    for site in found.sites:
        call = calls.get(site.name)
        if call is None or call.sdpa_calls:
            continue
        reason = replace_manual_attention(site, call)
        if reason:
            missed.append(_missed(site, reason))
        else:
            applied.append(f"{site.name}: hand-written attention replaced by SDPA (outputs verified equal)")
    for path, type_name in found.unknown:
        call = calls.get(path)
        if call is not None and not call.sdpa_calls:
            missed.append(NotApplied(path, type_name, "backend", "unrecognised attention that does not call SDPA"))
    if entry.sdp_backend is not None:
        add_forward_scope(model, backends.kernel_scope(backend))
        applied.append(f"attention backend {backend}: sdpa_kernel scope around forward")
    elif backend == "flex":
        add_forward_scope(model, attention_scope(backend))
        applied.append("attention backend flex: SDPA calls run as compiled flex_attention with block masks")
    return applied, missed


def replace_manual_attention(site: AttentionSite, call: ModuleCall) -> str | None:
    """Give the module its adapter's SDPA forward if that reproduces the recorded call; else say why not."""
    module = site.module
    candidates = site.adapter.sdpa_forwards(module)
    if not candidates:
        return "its forward did not call scaled_dot_product_attention"
    hidden, *extra = call.args or (None,)
    if not isinstance(hidden, torch.Tensor) or any(a is not None for a in [*extra, *call.kwargs.values()]):
        return "called with more than the hidden states (masks, positions), which SDPA cannot be verified on"
    if not isinstance(call.output, torch.Tensor):
        return "returns more than one tensor"
    dropouts = [m.p for m in module.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    if dropouts:
        return f"applies attention dropout (p={dropouts[0]}), which the replacement would not reproduce"
    own_forward = module.__dict__.get("forward")
    for forward in candidates:
        module.forward = types.MethodType(forward, module)
        with torch.no_grad():
            candidate = module(*call.args, **call.kwargs)
        reference = call.output
        scale = max(1.0, float(reference.abs().max()))
        if candidate.shape == reference.shape and float((candidate - reference).abs().max()) <= 1e-5 * scale:
            return None
    if own_forward is None:
        del module.forward
    else:
        module.forward = own_forward
    return "an SDPA forward (causal or not) does not reproduce its outputs"


def _missed(site: AttentionSite, reason: str) -> NotApplied:
    return NotApplied(site.name, type(site.attention_module).__name__, "backend", reason)
