"""Command-line options several commands share, defined once so their names and help agree.

Typer reads options from each command's signature, so a command still names each parameter;
its default is the shared option object from here. `run_overrides` turns the run-setting
options (one per field of attnprof.settings.Settings) into the overrides that
attnprof.settings resolves by precedence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from attnprof import backends
from attnprof.errors import UsageError
from attnprof.gate.compare import CheckOptions
from attnprof.gate.stats import DEFAULT_ALPHA, DEFAULT_THRESHOLDS
from attnprof.report.console import log
from attnprof.settings import ATTN_IMPLEMENTATIONS, DTYPES, LIMITS, MODES, ProjectConfig, Settings, canonical_dtype_name

TARGET_HELP = "model.py[:factory], package.module:factory, hf:NAME or zoo:NAME"

DEBUG = typer.Option(False, "--debug", help="Show attnprof's traceback on errors.")


# --- numbers: every numeric flag is parsed here, into its range, finite (else exit 2, one line) ---
def whole_number(flag: str, low: int, high: int, example: int) -> Callable[[str], int]:
    """A parser of the integers from `low` to `high` given to `flag`."""
    kind = "a positive integer" if low == 1 else "a non-negative integer" if low == 0 else f"an integer from {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise UsageError(f"{flag} must be {kind} up to {high}, e.g. {flag} {example}; got {text[:40]!r}")
        return value

    return parse


def real_number(flag: str, low: float, high: float, example: float, above_low: bool = False) -> Callable[[str], float]:
    """A parser of the finite numbers from `low` (excluded when `above_low`) to `high` given to `flag`."""
    kind = "a positive number" if above_low and low == 0 else f"above {low:g}" if above_low else f"at least {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (low < value if above_low else low <= value) and value <= high):
            raise UsageError(f"{flag} must be {kind} and at most {high:g}, e.g. {flag} {example:g}; got {text[:40]!r}")
        return value

    return parse


def count_option(default: int | None, *flags: str, low: int, high: int, help: str, example: int | None = None) -> Any:
    """An integer flag bounded to [low, high]."""
    shown = example if example is not None else default if default is not None else low
    return typer.Option(default, *flags, parser=whole_number(flags[0], low, high, shown), metavar="INTEGER", help=help)


def number_option(
    default: float | None, *flags: str, low: float, high: float, help: str, above_low: bool = False,
    example: float | None = None,
) -> Any:
    """A finite real-number flag bounded to [low, high] (or (low, high])."""
    shown = example if example is not None else default if default is not None else max(low, 1.0)
    parse = real_number(flags[0], low, high, shown, above_low)
    return typer.Option(default, *flags, parser=parse, metavar="NUMBER", help=help)


def builtin_default(name: str) -> str:
    """How help names a run setting's default: the built-in value, which ATTNPROF_*, [tool.attnprof]
    and the model's own ATTNPROF defaults override (attnprof.settings.resolve_settings)."""
    return f"(built-in default: {getattr(Settings(), name)})"


def setting_option(name: str, *flags: str, help: str) -> Any:
    """The flag of the whole-number setting `name`, bounded as attnprof.settings.LIMITS says."""
    low, high = LIMITS[name]
    return count_option(None, *flags, low=low, high=high, help=f"{help.rstrip('.')} {builtin_default(name)}.",
                        example=getattr(Settings(), name))


# --- run settings (attnprof.settings.Settings): None leaves a setting to the lower precedences ---
BATCH_SIZE = setting_option("batch_size", "--batch-size", "-b", help="Batch size")
SEQ_LEN = setting_option("seq_len", "--seq-len", "-s", help="Sequence length")
DTYPE = typer.Option(None, "--dtype", help=f"{', '.join(DTYPES)} {builtin_default('dtype')}.")
BACKEND = typer.Option(
    None, "--backend", help=f"SDPA backend: {', '.join(backends.NAMES)} {builtin_default('backend')}."
)
DEVICE = typer.Option(
    None, "--device", help=f"cpu, cuda, cuda:N, or meta (dry run: FLOPs and memory only) {builtin_default('device')}."
)
GPU_DEVICE = typer.Option(None, "--device", help=f"cpu, cuda or cuda:N {builtin_default('device')}.")
MODE = typer.Option(
    None, "--mode", help=f"{' or '.join(MODES)}: a no_grad forward, or forward + backward {builtin_default('mode')}."
)
WARMUP = setting_option("warmup", "--warmup", help="Warm-up steps, discarded")
REPEATS = setting_option("repeats", "--repeats", help="Timed steps")
THREADS = setting_option("threads", "--threads", help="CPU threads for torch (0: leave as is)")
CLOCK = typer.Option(
    None,
    "--clock",
    help="CPU step timing: wall, or cpu (process CPU time, which other load on a shared machine does not inflate) "
    f"{builtin_default('clock')}.",
)
ATTN_IMPLEMENTATION = typer.Option(
    None, "--attn-implementation",
    help=f"hf: targets: transformers' attention code, {', '.join(ATTN_IMPLEMENTATIONS)} (auto: the model's default).",
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
ALPHA = typer.Option(None, "--alpha", help=f"Significance level (default {DEFAULT_ALPHA}).")  # gate.compare checks it
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


def workload_target(config: ProjectConfig, given: str | None, source: Path, named: str) -> str:
    """The target to run: the command line's, else ATTNPROF_TARGET or [tool.attnprof] target,
    else the one the data file `source` names, if that is safe to run (which is said)."""
    from attnprof.targets.load import data_file_target

    chosen = config.resolve("target", given, None)
    if chosen is not None:
        return str(chosen)
    project = config.source.parent if config.source is not None else Path.cwd()
    target = data_file_target(named, source, project)
    log(f"running {target}, the target {source} names")
    return target
