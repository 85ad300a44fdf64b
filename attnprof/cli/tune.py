"""`attnprof tune [TARGET] --budget ...`: the fastest (or cheapest) verified plan under a budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from attnprof import backends
from attnprof.api import winning_plan
from attnprof.cli import options
from attnprof.cli.outputs import refuse_overwriting
from attnprof.errors import UsageError
from attnprof.report.console import log, print_result, stdout_console
from attnprof.report.html import render_html
from attnprof.report.plan import print_tune
from attnprof.settings import DTYPES, resolve_settings
from attnprof.store import atomic_write_text, file_identity, record_json, write_record
from attnprof.tuning.budget import CONTRADICTION_SIGMAS, parse_budget, parse_objective
from attnprof.tuning.space import knobs_help, parse_backend_values, parse_plan_knobs

if TYPE_CHECKING:
    from attnprof.tuning.sharding import LinkLike

DEFAULT_PLAN = Path("plan.json")


def tune_command(
    target: str = typer.Argument(
        None, help=f"{options.TARGET_HELP} (default: zoo:decoder)."
    ),
    budget: list[str] = typer.Option(
        None, "--budget", help="A limit: memory=20GiB, latency=15ms or energy=2J. Repeat for several."
    ),
    objective: str = typer.Option("latency", "--objective", help="latency, throughput, energy or memory."),
    gpus: int = options.count_option(1, "--gpus", low=1, high=4096, help="Devices the plan may shard over."),
    max_error: str = typer.Option(
        None, "--max-error", help="Relative output error allowed vs fp32 for precision changes (default 1e-2)."
    ),
    max_quality_loss: str = typer.Option(
        None, "--max-quality-loss", help="Relative output change allowed for head changes, e.g. 1%."
    ),
    headroom: str = typer.Option(None, "--headroom", help="Share of the memory budget held in reserve, e.g. 10%."),
    knobs: str = typer.Option(
        None,
        "--knobs",
        help=knobs_help(),
    ),
    top_k: int = options.count_option(
        3, "--top-k", low=1, high=1000, help="Candidates measured for real before choosing."
    ),
    uncertainty: float = options.number_option(
        CONTRADICTION_SIGMAS,
        "--uncertainty",
        low=0.0,
        high=1e12,
        above_low=True,
        help="Standard deviations a measurement may fall behind its prediction before it counts as refuting "
        "it (noted, and fed back to the estimates; it never rejects the plan).",
    ),
    pareto: bool = typer.Option(False, "--pareto", help="Also show the Pareto frontier."),
    html: Path = typer.Option(None, "--html", help="Also write a self-contained HTML report (with the frontier)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan JSON to stdout and nothing else."),
    apply: bool = typer.Option(
        True, "--apply/--no-apply", help="Measure the candidates and write the winner's profile next to the plan."
    ),
    launch: bool = typer.Option(
        True, "--launch/--no-launch", help="Launch sharded candidates under torchrun on this machine and measure "
        "them (N CPU processes, or N GPUs for --gpus N)."
    ),
    history: bool = typer.Option(
        True, "--history/--no-history", help="Price choices from what earlier tune runs of this workload measured "
        "on this machine (attnprof's cache) instead of probing them again; this run's measurements are remembered "
        "either way."
    ),
    out: Path = typer.Option(DEFAULT_PLAN, "--out", "-o", help="Where to write the plan JSON."),
    interconnect: str = typer.Option(
        None, "--interconnect", help="GPU link for sharding plans: nvlink3, nvlink4, pcie4, pcie5, ib_hdr, ib_ndr."
    ),
    batch_size: int = options.setting_option("batch_size", "--batch-size", "-b", help="Batch size of one step."),
    seq_len: int = options.SEQ_LEN,
    dtype: str = typer.Option(None, "--dtype", help=f"Baseline dtype: {', '.join(DTYPES)}."),
    backend: str = typer.Option(None, "--backend", help=f"Baseline SDPA backend: {', '.join(backends.NAMES)}."),
    backend_values: str = typer.Option(
        None, "--backends",
        help=f"Values of the backend knob (default: the SDPA kernels): any of {', '.join(backends.PLAN_NAMES)}; "
        "flex runs SDPA calls as compiled flex_attention, eager is transformers' eager attention (hf: targets).",
    ),
    device: str = options.GPU_DEVICE,
    mode: str = options.MODE,
    warmup: int = options.setting_option("warmup", "--warmup", help="Warm-up steps per measurement."),
    repeats: int = options.setting_option("repeats", "--repeats", help="Timed steps per measurement."),
    threads: int = options.setting_option("threads", "--threads", help="Baseline CPU threads."),
    debug: bool = options.DEBUG,
) -> None:
    """Find the best verified plan under the budget; exit 5 when none fits, 1 when none survives measurement."""
    from attnprof.targets.load import load_workload, target_source
    from attnprof.tuning.loop import TuneRequest, pareto_points, tune

    limits = parse_budget(budget, gpus=gpus, max_error=max_error, max_quality_loss=max_quality_loss, headroom=headroom)
    goal = parse_objective(objective)
    refuse_overwriting({"--out": out, "--html": html}, {"the model": target_source(target)})
    workload = load_workload(target)
    overrides = options.run_overrides(
        batch_size=batch_size, seq_len=seq_len, dtype=dtype, backend=backend, device=device, mode=mode,
        warmup=warmup, repeats=repeats, threads=threads,
    )
    settings = resolve_settings(workload, overrides)
    request = TuneRequest(
        budget=limits,
        objective=goal,
        knobs=parse_plan_knobs(knobs, settings.mode, gpus),
        top_k=top_k,
        pareto=pareto or html is not None,  # the report draws the frontier
        verify=apply,
        launch=launch,
        link=_link(interconnect, settings.device, gpus),
        contradiction_sigmas=uncertainty,
        use_history=history,
        backends=parse_backend_values(backend_values),
    )
    log(f"tuning {workload.target} for {goal} ({settings.mode}, batch {settings.batch_size}, seq {settings.seq_len})")
    outcome = tune(workload, settings, request)
    if not as_json:
        print_tune(outcome, stdout_console(), pareto=pareto)
    plan = winning_plan(outcome)
    # The winner's profile goes beside a plan file; a plan written into a device or stdout has no beside.
    if apply and outcome.winner is not None and outcome.winner.profile is not None and file_identity(out) is not None:
        profile_file = out.with_name(out.stem + ".profile.json")
        write_record(profile_file, outcome.winner.profile)
        plan.verification_profile = str(profile_file)
    plan.frontier = pareto_points(outcome)
    write_record(out, plan)
    log(f"saved {out}" + (f" and {plan.verification_profile}" if plan.verification_profile else ""))
    if html is not None:
        atomic_write_text(html, render_html(plan))
        log(f"wrote {html}")
    if as_json:
        print_result(record_json(plan))


def _link(name: str | None, device: str, gpus: int) -> LinkLike | None:
    """The link of a sharding plan: the one asked for; else the one this machine measured for
    `gpus` ranks (`doctor --calibrate --link`); else the GPU's usual board link from its datasheet,
    or gloo's built-in figure for CPU ranks. Says which it uses."""
    if name is None and gpus == 1:
        return None
    link = _chosen_link(name, device, gpus)
    log(f"sharding priced on {link.name}: {link.source}")
    return link


def _chosen_link(name: str | None, device: str, gpus: int) -> LinkLike:
    import torch

    from attnprof.machine import machine_info
    from attnprof.measure.hardware import INTERCONNECTS, device_key, find_spec
    from attnprof.measure.links import calibrated_link
    from attnprof.tuning.sharding import GLOO_LOOPBACK, MeasuredLink

    if name is not None and name not in INTERCONNECTS:
        raise UsageError(f"--interconnect {name!r}: must be one of {', '.join(INTERCONNECTS)}, e.g. nvlink4")
    cpu = not device.startswith("cuda")
    if cpu and name is not None:
        raise UsageError(
            f"--interconnect {name} is a GPU link; on {device} the ranks talk over gloo on this host, "
            "which tune prices itself: drop --interconnect, e.g. --gpus 2"
        )
    if name is not None:
        return INTERCONNECTS[name]
    key = device_key(torch.device(device))
    measured = calibrated_link(machine_info(), "gloo" if cpu else "nccl", key, gpus)
    if measured is not None:
        return MeasuredLink.from_calibration(measured)
    if cpu:
        return GLOO_LOOPBACK
    spec = find_spec(key)
    if spec is not None:
        return INTERCONNECTS[spec.interconnect]
    raise UsageError(f"--gpus {gpus} on {device}: name the link with --interconnect, e.g. --interconnect nvlink4")
