"""Apply a plan's choices to an unmodified model, in an order where each step sees real weights:
backend (needs the original forward), heads (needs fp32 gradients), precision, checkpointing,
compilation (of the blocks as every other choice left them), and sharding last (it turns
parameters into DTensors)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnprof.errors import UsageError
from attnprof.plans.adapters.base import Unsupported
from attnprof.plans.backend import apply_backend, check_backend_runs
from attnprof.plans.calls import Recording, record_calls
from attnprof.plans.checkpointing import checkpoint_modules
from attnprof.plans.compile import compile_blocks
from attnprof.plans.discover import AttentionSite, Discovery, discover, note_sdpa_callers
from attnprof.plans.heads import choose_heads, convert_to_gqa, head_importance, prune_heads, update_config
from attnprof.plans.outputs import logits_of, main_tensor
from attnprof.plans.precision import LOW_PRECISION, apply_precision
from attnprof.plans.records import ALL_LAYERS, ApplyReport, NotApplied, PlanChoices, SiteChange
from attnprof.plans.sharding import apply_sharding, check_shardable
from attnprof.targets.workload import call_user, normalize_inputs

LossFn = Callable[[Any, tuple[tuple, dict]], torch.Tensor | None]


@dataclass
class Example:
    """Example inputs: positional and keyword arguments of one forward call."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, inputs: Any) -> Example:
        """From a tensor, a tuple or list of args, a dict of kwargs, or an (args, kwargs) pair."""
        if isinstance(inputs, Example):
            return inputs
        return cls(*normalize_inputs(inputs, "example_inputs must be a tensor,"))

    def run(self, model: nn.Module) -> Any:
        return call_user(model, *self.args, what="the model's forward", **self.kwargs)


def apply_plan(
    model: nn.Module,
    choices: PlanChoices,
    example: Example | None = None,
    loss_fn: LossFn | None = None,
) -> tuple[nn.Module, ApplyReport]:
    """Apply `choices` to `model` in place (sharding may wrap it); returns the model to use."""
    device = _device_of(model)
    check_shardable(choices)
    if choices.backend != "auto":
        check_backend_runs(choices.backend, device, LOW_PRECISION.get(choices.dtype, torch.float32))
    found = discover(model)
    recording = Recording()
    if example is not None:
        paths = [p for s in found.sites for p in (s.name, s.module_path)] + [path for path, _ in found.unknown]
        recording = record_calls(model, list(dict.fromkeys(paths)), lambda: example.run(model))
        note_sdpa_callers(found, model, recording.sdpa_callers)
    report = ApplyReport(sites=[_site_change(site) for site in found.sites])
    _check_layer_names(found, choices, report)
    if choices.threads and device.type == "cpu":
        torch.set_num_threads(choices.threads)
        report.applied.append(f"torch CPU threads set to {choices.threads} (process-wide)")
    if choices.backend != "auto":
        applied, missed = apply_backend(model, found, choices.backend, recording.calls)
        report.applied += applied
        report.not_applied += missed
    if choices.changes_heads():
        _apply_heads(model, found, choices, example, loss_fn, report, recording)
    report.applied += apply_precision(model, choices.dtype, choices.precision, device)
    checkpointed = found.blocks() if choices.checkpoint == [ALL_LAYERS] else choices.checkpoint
    report.applied += checkpoint_modules(model, checkpointed)
    if choices.compile:
        report.applied += compile_blocks(model, found)
    model, applied, missed = apply_sharding(model, found, choices, device, example.args if example else ())
    report.applied += applied
    report.not_applied += missed
    if choices.world_size > 1:
        import torch.distributed as dist

        report.rank, report.world_size = dist.get_rank(), dist.get_world_size()
    return model, report


def with_pruned_indices(choices: PlanChoices, report: ApplyReport) -> PlanChoices:
    """`choices` with every head count replaced by the indices the application removed, per
    layer: a plan that removes the same heads wherever, and with whatever inputs, it is applied."""
    sites = report.sites
    pruned: dict[str, int | list[int]] = {site.name: list(site.pruned_heads) for site in sites if site.pruned_heads}
    return dataclasses.replace(choices, prune_heads=pruned)


def _apply_heads(
    model: nn.Module,
    found: Discovery,
    choices: PlanChoices,
    example: Example | None,
    loss_fn: LossFn | None,
    report: ApplyReport,
    recording: Recording,
) -> None:
    changes = {change.name: change for change in report.sites}
    importance: dict[str, torch.Tensor] = {}
    if any(isinstance(v, int) for v in choices.prune_heads.values()):
        if example is None:
            raise UsageError("pruning heads by importance needs example inputs to score the heads on")
        importance = head_importance(model, found.sites, lambda: importance_loss(model, example, loss_fn))
        for name, scores in importance.items():
            changes[name].head_importance = [round(float(s), 8) for s in scores]
    pruned: dict[str, list[int]] = {}
    for key, value in choices.prune_heads.items():
        for site in found.select(key):
            remove = choose_heads(site.layout, importance[site.name], value) if isinstance(value, int) else value
            call = recording.calls.get(site.module_path)
            if _attempt(site, "prune_heads", report, lambda s=site, r=remove, c=call: prune_heads(s, r, c)):
                pruned[site.name] = sorted(remove)
                changes[site.name].pruned_heads = sorted(remove)
    grouped = 0
    for key, kv_heads in choices.kv_heads.items():
        for site in found.select(key):
            call = recording.calls.get(site.module_path)
            grouped += _attempt(site, "kv_heads", report, lambda s=site, k=kv_heads, c=call: convert_to_gqa(s, k, c))
    for site in found.sites:
        layout = site.layout
        changes[site.name].new_num_heads = layout.num_heads
        changes[site.name].new_num_kv_heads = layout.num_kv_heads
    if pruned:
        report.applied.append(f"heads pruned in {len(pruned)} layers (weights sliced)")
    if grouped:
        report.applied.append(f"K/V heads mean-pooled into groups in {grouped} layers")
    report.applied += update_config(model, found.sites, pruned)


def _attempt(site: AttentionSite, what: str, report: ApplyReport, action: Callable[[], object]) -> bool:
    try:
        action()
    except Unsupported as exc:
        report.not_applied.append(NotApplied(site.name, type(site.attention_module).__name__, what, str(exc)))
        return False
    return True


def importance_loss(model: nn.Module, example: Example, loss_fn: LossFn | None) -> torch.Tensor:
    """The workload's loss if it has one; else the cross-entropy of the model's own top-1
    predictions (for logits) or the mean square of the output: what the heads contribute to."""
    output = example.run(model)
    if loss_fn is not None:
        loss = call_user(loss_fn, output, (example.args, example.kwargs), what="loss_fn")
        if loss is not None:
            return loss
    logits = logits_of(output, model)
    if logits is not None:
        flat = logits.float().flatten(0, -2)
        return F.cross_entropy(flat, flat.argmax(dim=-1).detach())
    return main_tensor(output).float().pow(2).mean()


def _check_layer_names(found: Discovery, choices: PlanChoices, report: ApplyReport) -> None:
    """Every layer a plan names must exist; unrecognised attention is reported, never skipped."""
    unknown = dict(found.unknown)
    for what, keys in (("prune_heads", choices.prune_heads), ("kv_heads", choices.kv_heads)):
        for key in keys:
            if key == ALL_LAYERS:
                report.not_applied += [
                    NotApplied(path, type_name, what, "no adapter understands this attention module")
                    for path, type_name in found.unknown
                ]
            elif key in unknown:
                report.not_applied.append(
                    NotApplied(key, unknown[key], what, "no adapter understands this attention module")
                )
            elif not found.select(key):
                known = ", ".join(s.name for s in found.sites) or "none"
                raise UsageError(
                    f"the plan names attention layer {key!r}, which the model does not have (it has: {known})"
                )


def _site_change(site: AttentionSite) -> SiteChange:
    layout = site.layout
    return SiteChange(
        name=site.name,
        type=type(site.attention_module).__name__,
        family=site.family,
        num_heads=layout.num_heads,
        num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        new_num_heads=layout.num_heads,
        new_num_kv_heads=layout.num_kv_heads,
    )


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")
