"""`attnprof apply PLAN [TARGET]`: apply a saved plan to the unmodified model, optionally verified.

A multi-rank plan prints the torchrun command that runs it; under torchrun each rank joins the
process group (gloo on CPU, nccl on GPU), applies the plan and verifies its own outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from attnprof.api import load_plan
from attnprof.cli import options
from attnprof.cli.outputs import refuse_overwriting
from attnprof.errors import EnvironmentUnsupported, PlanRejected, UsageError
from attnprof.plans.records import Plan
from attnprof.report.console import log, print_result, stdout_console
from attnprof.settings import ProjectConfig
from attnprof.store import record_json, write_record

if TYPE_CHECKING:
    import torch

    from attnprof.targets.workload import Workload


def apply_command(
    plan_path: Path = typer.Argument(..., metavar="PLAN", help="Plan JSON written by attnprof tune."),
    target: str = typer.Argument(
        None, help="The model the plan is for (default: [tool.attnprof] target, else the plan's if that is built in "
        "or inside this project)."
    ),
    verify: bool = typer.Option(
        False, "--verify", help="Compare outputs with the unmodified model and re-profile the applied one."
    ),
    force: bool = typer.Option(False, "--force", help="Apply a plan made for another workload fingerprint."),
    device: str = typer.Option(None, "--device", help="Run on this device instead of the plan's."),
    out: Path = typer.Option(None, "--out", "-o", help="Save the apply report (JSON) here."),
    profile_out: Path = typer.Option(
        None, "--profile-out", help="Where --verify saves the applied model's profile (default: next to the plan)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the apply report JSON to stdout and nothing else."),
    debug: bool = options.DEBUG,
) -> None:
    """Apply a saved plan to a model; with --verify, check it against the unmodified model."""
    from attnprof.measure.device import resolve_device
    from attnprof.plans.sharding import check_shardable, init_distributed, launched_ranks, rank_device, torchrun_command
    from attnprof.targets.load import load_workload, target_source

    plan = load_plan(plan_path)
    chosen = options.workload_target(ProjectConfig.load(), target, plan_path, plan.workload.target)
    refuse_overwriting(
        {"--out": out, "--profile-out": (profile_out or applied_profile_path(plan_path)) if verify else None},
        {"the plan": plan_path, "the model": target_source(chosen)},
    )
    workload = load_workload(chosen)
    check_fingerprint(plan, workload, force, plan_path)
    check_shardable(plan.choices)
    world_size = plan.choices.world_size
    ranks = launched_ranks()
    if world_size > 1 and ranks is None:
        argv = rerun_arguments(plan_path, target, verify, force, device, out, as_json)
        command = torchrun_command(world_size, argv)
        print_result(json.dumps({"torchrun_command": command}) if as_json else command)
        raise EnvironmentUnsupported(f"the plan needs {world_size} ranks: run it with the torchrun command above")
    run_device = resolve_device(device or plan.settings.device)
    if world_size > 1:
        ranks = init_distributed(run_device)
        run_device = rank_device(run_device, ranks)
    import torch.distributed as dist

    try:
        run_plan(plan, plan_path, workload, run_device, verify, out, profile_out, as_json)
        if world_size > 1:
            # Every rank done before any tears its process group down: a rank that exits while a
            # peer still talks to it aborted in gloo (std::terminate) in about 1 run in 3 here.
            dist.barrier()
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def run_plan(
    plan: Plan,
    plan_path: Path,
    workload: Workload,
    device: torch.device,
    verify: bool,
    out: Path | None,
    profile_out: Path | None,
    as_json: bool,
) -> None:
    from attnprof.measure.dtypes import parse_dtype
    from attnprof.plans.engine import Example, apply_plan
    from attnprof.plans.verify import applied_settings, hold_to_limits, reprofile, step_time, verify_model
    from attnprof.report.apply import print_apply_report

    settings = applied_settings(plan.settings, plan.choices)
    dtype = parse_dtype(plan.settings.dtype)
    args, kwargs = workload.make_inputs(settings.batch_size, settings.seq_len, device, dtype)
    example = Example(tuple(args), dict(kwargs))
    model = build(workload, device, dtype)
    reference = build(workload, device, dtype) if verify else None
    model, report = apply_plan(model, plan.choices, example, workload.loss_fn)
    if reference is not None:
        check = verify_model(reference, model.eval(), example, plan.budgets, plan.choices)
        check.predicted_latency_ms = plan.predicted.latency_ms
        # One step of the plan: its micro-batches, on each data-parallel replica's share of the batch.
        micro_steps = plan.choices.micro_steps(plan.settings.batch_size)
        if report.world_size > 1:
            check.measured_latency_ms = micro_steps * step_time(model, example, settings, device).median
        else:
            profile = reprofile(workload, model, settings)
            path = profile_out or applied_profile_path(plan_path)
            write_record(path, profile)
            check.profile_path = str(path)
            hold_to_limits(check, plan.budgets, profile, micro_steps)
        report.verification = check
    if report.rank == 0:
        if out is not None:
            write_record(out, report)
            log(f"saved {out}")
        if as_json:
            print_result(record_json(report))
        else:
            print_apply_report(report, plan, stdout_console())
    if report.verification is not None and not report.verification.passed:
        raise PlanRejected("verification failed: " + "; ".join(report.verification.reasons))


def applied_profile_path(plan_path: Path) -> Path:
    """Where --verify saves the applied model's profile unless told: next to the plan."""
    return plan_path.with_name(f"{plan_path.stem}-applied-profile.json")


def check_fingerprint(plan: Plan, workload: Workload, force: bool, plan_path: Path) -> None:
    """A plan is tuned for one workload; applying it elsewhere is refused unless forced."""
    actual = workload.fingerprint(plan.settings)
    if actual == plan.workload.fingerprint:
        return
    if force:
        log(f"warning: {plan_path} was made for workload {plan.workload.fingerprint}; applying to {actual} (--force)")
        return
    raise UsageError(
        f"{plan_path} was made for {plan.workload.target} (fingerprint {plan.workload.fingerprint}), "
        f"but {workload.target} has fingerprint {actual}; pass --force to apply it anyway"
    )


def rerun_arguments(
    plan_path: Path,
    target: str | None,
    verify: bool,
    force: bool,
    device: str | None,
    out: Path | None,
    as_json: bool,
) -> list[str]:
    """This command's arguments, for each rank to run again under torchrun."""
    argv = ["apply", str(plan_path)]
    if target:
        argv.append(target)
    argv += ["--verify"] if verify else []
    argv += ["--force"] if force else []
    argv += ["--device", device] if device else []
    argv += ["--out", str(out)] if out else []
    argv += ["--json"] if as_json else []
    return argv


def build(workload: Workload, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Seeded, so the reference and every rank get the same weights from the user's factory."""
    import torch

    from attnprof.targets.workload import call_user

    torch.manual_seed(0)
    model = call_user(workload.build_model, device, dtype, what="build_model")
    return model.to(device=device).eval()
