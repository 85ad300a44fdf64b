"""Compare an applied model with the unmodified one on the example inputs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnprof.plans.engine import Example
from attnprof.plans.outputs import logits_of, main_tensor
from attnprof.plans.records import Budget, PlanChoices, Verification
from attnprof.profiling.records import Profile, TimeStats
from attnprof.settings import Settings
from attnprof.targets.workload import Workload


def compare_outputs(reference: Any, applied: Any, reference_model: nn.Module) -> Verification:
    """Max abs / relative error and, for logits, mean KL(reference || applied) over positions."""
    ref = main_tensor(reference).detach().float()
    new = main_tensor(applied).detach().float()
    if ref.shape != new.shape:
        return Verification(
            max_abs_error=math.inf,
            max_rel_error=math.inf,
            logit_kl=None,
            finite=bool(torch.isfinite(new).all()),
            passed=False,
            reasons=[f"output shape {tuple(new.shape)} differs from the reference {tuple(ref.shape)}"],
        )
    finite = bool(torch.isfinite(new).all())
    max_abs = float((new - ref).abs().max()) if ref.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    kl = None
    ref_logits = logits_of(reference, reference_model)
    if ref_logits is not None:
        new_logits = logits_of(applied, reference_model)
        if new_logits is not None:
            kl = float(
                F.kl_div(
                    F.log_softmax(new_logits.detach().float(), dim=-1).flatten(0, -2),
                    F.log_softmax(ref_logits.detach().float(), dim=-1).flatten(0, -2),
                    log_target=True,
                    reduction="batchmean",
                )
            )
    reasons = [] if finite else ["outputs contain inf or nan"]
    return Verification(
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        logit_kl=kl,
        finite=finite,
        passed=finite,
        reasons=reasons,
    )


def hold_to_budget(verification: Verification, budgets: Budget, choices: PlanChoices) -> Verification:
    """Fail the verification when the error exceeds the plan's bound: max_quality_loss for
    plans that change heads (the output is meant to move), max_error otherwise."""
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


def applied_settings(plan_settings: Settings, choices: PlanChoices) -> Settings:
    """The settings an applied plan runs with: the plan's, with its batch size, threads and backend."""
    return dataclasses.replace(
        plan_settings,
        batch_size=choices.batch_size or plan_settings.batch_size,
        threads=choices.threads or plan_settings.threads,
        backend=choices.backend,
    )


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
