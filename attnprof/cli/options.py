"""Command-line options several commands share, defined once so their names and help agree.

Typer reads options from each command's signature, so a command still names each parameter;
its default is the shared option object from here. `run_overrides` turns the run-setting
options (one per field of attnprof.settings.Settings) into the overrides that
attnprof.settings resolves by precedence.
"""

from __future__ import annotations

from typing import Any

import typer

from attnprof import backends
from attnprof.gate.compare import CheckOptions
from attnprof.gate.stats import DEFAULT_ALPHA, DEFAULT_THRESHOLDS
from attnprof.report.console import log
from attnprof.settings import DTYPES, MODES, ProjectConfig, canonical_dtype_name

TARGET_HELP = "model.py[:factory], package.module:factory, hf:NAME or zoo:NAME"

DEBUG = typer.Option(False, "--debug", help="Show attnprof's traceback on errors.")

# --- run settings (attnprof.settings.Settings): None leaves a setting to the lower precedences ---
BATCH_SIZE = typer.Option(None, "--batch-size", "-b", help="Batch size.")
SEQ_LEN = typer.Option(None, "--seq-len", "-s", help="Sequence length.")
DTYPE = typer.Option(None, "--dtype", help=f"{', '.join(DTYPES)}.")
BACKEND = typer.Option(None, "--backend", help=f"SDPA backend: {', '.join(backends.NAMES)}.")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:N, or meta (dry run: FLOPs and memory only).")
GPU_DEVICE = typer.Option(None, "--device", help="cpu, cuda or cuda:N.")
MODE = typer.Option(None, "--mode", help=f"{' or '.join(MODES)}: a no_grad forward, or forward + backward.")
WARMUP = typer.Option(None, "--warmup", help="Warm-up steps, discarded.")
THREADS = typer.Option(None, "--threads", help="CPU threads for torch (default: leave as is).")
CLOCK = typer.Option(
    None,
    "--clock",
    help="CPU step timing: wall, or cpu (process CPU time, which other load on a shared machine does not inflate).",
)
REFERENCE_PROBE_HELP = (
    "Time a fixed reference workload after each step, so `check`/`compare` can divide out the machine's drift"
)


# --- check and compare: how two profiles are judged, and what is written ---
THRESHOLD = typer.Option(
    None,
    "--threshold",
    "-t",
    help="[GLOB:]STAT:LIMIT, repeatable: median:5%, p90:10%, memory:2%, layers.*attn*:median:8%, "
    f"layers.*norm*:median:off (default: {' '.join(DEFAULT_THRESHOLDS)}).",
)
METRIC = typer.Option(None, "--metric", "-m", help="Glob of metric names to compare, repeatable.")
ALPHA = typer.Option(None, "--alpha", help=f"Significance level (default {DEFAULT_ALPHA}).")
MODULE_LIMIT = typer.Option(
    None,
    "--module-limit",
    help="Also gate every module's median time at this increase, e.g. 10% (Holm-corrected over the modules; "
    "default: modules are reported, and a step regression is attributed to them).",
)
ALLOW_MACHINE_MISMATCH = typer.Option(
    False, "--allow-machine-mismatch", help="Compare with a baseline from another machine (warns)."
)
CHECK_RESULT = typer.Option(None, "--result", help="Write the check result JSON to this file.")
SHOW_ALL = typer.Option(False, "--all", help="List every metric, passing ones too.")
CHECK_JSON = typer.Option(False, "--json", help="Print the check result JSON to stdout and nothing else.")


def run_overrides(**given: Any) -> dict[str, Any]:
    """Settings fields from run-setting options: dtype aliases made canonical, unset ones None."""
    if given.get("dtype") is not None:
        given["dtype"] = canonical_dtype_name(given["dtype"])
    return given


def check_options(
    config: ProjectConfig,
    thresholds: list[str] | None,
    metrics: list[str] | None,
    alpha: float | None,
    allow_machine_mismatch: bool,
    module_limit: str | None = None,
) -> CheckOptions:
    """CheckOptions from the command line, the environment, pyproject.toml and the defaults."""
    for key in config.unknown_keys():
        log(f"warning: {config.source}: tool.attnprof.{key} is not an attnprof setting; ignored")
    return CheckOptions.from_config(config, thresholds, metrics, alpha, allow_machine_mismatch, module_limit)
