"""Compare an applied model with the unmodified one on the example inputs."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnprof.errors import PlanRejected
from attnprof.plans.engine import Example, apply_plan
from attnprof.plans.outputs import logits_of, main_tensor, output_difference
from attnprof.plans.records import ApplyReport, Budget, PlanChoices, Verification, budget_value
from attnprof.profiling.records import Profile, TimeStats
from attnprof.settings import Settings, with_plan_choices
from attnprof.targets.workload import Workload


def compare_outputs(reference: Any, applied: Any, reference_model: nn.Module) -> Verification:
    """Max abs / relative error and, for logits, mean KL(reference || applied) over positions."""
    difference = output_difference(reference, applied)
    if difference.mismatch:
        reasons, kl = [difference.mismatch], None
    else:
        reasons = [] if difference.finite else ["outputs contain inf or nan"]
        kl = _logit_kl(reference, applied, reference_model)
    return Verification(
        max_abs_error=difference.max_abs,
        max_rel_error=difference.max_rel,
        logit_kl=kl,
        finite=difference.finite,
        passed=not reasons,
        reasons=reasons,
    )


def _logit_kl(reference: Any, applied: Any, reference_model: nn.Module) -> float | None:
    ref_logits = logits_of(reference, reference_model)
    new_logits = logits_of(applied, reference_model) if ref_logits is not None else None
    if ref_logits is None or new_logits is None:
        return None
    return float(
        F.kl_div(
            F.log_softmax(new_logits.detach().float(), dim=-1).flatten(0, -2),
            F.log_softmax(ref_logits.detach().float(), dim=-1).flatten(0, -2),
            log_target=True,
            reduction="batchmean",
        )
    )


def hold_to_budget(verification: Verification, budgets: Budget, choices: PlanChoices) -> Verification:
    """Fail the verification when the error exceeds the plan's bound: max_quality_loss for
    plans that change heads (the output is meant to move), max_error otherwise. Tune writes
    the bounds it accepted the plan within, defaults included."""
    bound, name = budgets.max_error, "max_error"
    if choices.changes_heads() and budgets.max_quality_loss is not None:
        bound, name = budgets.max_quality_loss, "max_quality_loss"
    if bound is not None and not verification.max_rel_error <= bound:
        verification.passed = False
        verification.reasons.append(f"relative output error {verification.max_rel_error:.3g} exceeds {name} {bound:g}")
    return verification


def verify_model(
    reference_model: nn.Module,
    applied_model: nn.Module,
    example: Example,
    budgets: Budget,
    choices: PlanChoices,
) -> Verification:
    """Run both models on the example inputs (no grad) and compare."""
    with torch.no_grad():
        reference = example.run(reference_model)
        applied = example.run(applied_model)
    return hold_to_budget(compare_outputs(reference, applied, reference_model), budgets, choices)


def hold_to_limits(verification: Verification, budgets: Budget, profile: Profile, micro_steps: int) -> Verification:
    """Fail the verification when the applied model's own measurement breaks a budget of the plan:
    memory per device, latency and energy of a whole step (`micro_steps` micro-batches)."""
    totals = profile.totals
    verification.micro_steps = micro_steps
    verification.measured_memory_bytes = float(totals.peak_memory_bytes)
    if totals.time_ms is not None:
        verification.measured_latency_ms = micro_steps * totals.time_ms.median
    if totals.energy_j is not None:
        verification.measured_energy_j = micro_steps * totals.energy_j
    for metric, limit in budgets.limits().items():
        value = getattr(verification, f"measured_{metric}")
        if value is None:
            reason = totals.energy_reason if metric == "energy_j" else "no timing"
            verification.reasons.append(f"the {metric} budget could not be checked: {reason}")
        elif value > limit:
            shown, allowed = budget_value(metric, value), budget_value(metric, limit)
            verification.reasons.append(f"measured {metric} {shown} exceeds the plan's budget {allowed}")
        else:
            continue
        verification.passed = False
    return verification


def applied_settings(plan_settings: Settings, choices: PlanChoices) -> Settings:
    """The settings an applied plan runs with: the plan's, with its batch size, threads and backend
    (the applied model already holds the plan's precision). A pipeline is called with the whole
    batch: its schedule splits it into the plan's micro-batches."""
    micro_batch = choices.batch_size if choices.pipeline_stages == 1 else None
    return with_plan_choices(plan_settings, choices.backend, micro_batch, choices.threads)


def raise_not_applied(report: ApplyReport) -> None:
    """A plan measured or compared only as a whole: a part that did not apply rejects it."""
    if report.not_applied:
        missed = "; ".join(f"{n.module}: {n.what}: {n.reason}" for n in report.not_applied)
        raise PlanRejected(f"the plan could not be applied: {missed}")


def applied_workload(workload: Workload, settings: Settings, choices: PlanChoices) -> Workload:
    """The workload whose model is built as `attnprof apply` builds it: the unmodified model,
    then `choices` applied by plans.engine.apply_plan with the workload's inputs and loss."""
    build = workload.build_model

    def build_applied(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        model = build(device, dtype).to(device)
        args, kwargs = workload.make_inputs(settings.batch_size, settings.seq_len, device, dtype)
        model, report = apply_plan(model, choices, Example(args, kwargs), workload.loss_fn)
        raise_not_applied(report)
        return model

    return dataclasses.replace(workload, build_model=build_applied)


def reprofile(workload: Workload, applied_model: nn.Module, settings: Settings) -> Profile:
    """A full per-layer profile of the applied model, as `attnprof profile` would measure it."""
    from attnprof.profiling.run import run_profile

    applied = dataclasses.replace(workload, build_model=lambda device, dtype: applied_model, architecture="")
    return run_profile(applied, settings)


def step_time(model: nn.Module, example: Example, settings: Settings, device: torch.device) -> TimeStats:
    """Step time of a sharded model on this rank (every rank runs the same steps: collectives pair up)."""
    from attnprof.measure.timing import time_call

    def step() -> None:
        if settings.mode == "infer":
            with torch.no_grad():
                example.run(model)
        else:
            main_tensor(example.run(model)).float().square().mean().backward()

    for _ in range(settings.warmup):
        step()
    return TimeStats.from_samples([1e3 * time_call(step, device, settings.clock) for _ in range(settings.repeats)])
