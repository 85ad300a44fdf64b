"""`attnprof predict TARGET`: latency and memory of a configuration from a fitted cost model."""

from __future__ import annotations

from pathlib import Path

import typer

from attnprof.cli import options
from attnprof.costmodel.knobs import config_of
from attnprof.costmodel.records import CostModel
from attnprof.errors import InputFileError
from attnprof.machine import machine_info
from attnprof.report.console import print_result, stdout_console, warn
from attnprof.settings import canonical_dtype_name, resolve_settings
from attnprof.store import DEFAULT_PROFILE_DIR, read_record, record_json


def predict_command(
    target: str = typer.Argument(None, help="The workload the model was fitted on."),
    batch_size: int = options.BATCH_SIZE,
    seq_len: int = options.SEQ_LEN,
    dtype: str = options.DTYPE,
    backend: str = options.BACKEND,
    threads: int = options.setting_option("threads", "--threads", help="CPU threads."),
    mode: str = options.MODE,
    device: str = options.GPU_DEVICE,
    model: Path = typer.Option(None, "--model", "-m", help="Cost model JSON (default: the one `fit` saved)."),
    profiles_dir: Path = typer.Option(DEFAULT_PROFILE_DIR, "--profiles-dir", help="Where `fit` saved it."),
    layers: int = options.count_option(
        15, "--layers", low=0, high=1_000_000, help="Show the N slowest layers (0: all)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the prediction JSON to stdout and nothing else."),
    debug: bool = options.DEBUG,
) -> None:
    """Predict per-layer and total latency and peak memory, with uncertainty; warns when extrapolating.

    A choice knob left out (dtype, backend, threads) takes the value the model measured, when it
    measured only one."""
    from attnprof.costmodel.fit import measured_choice, predict_config
    from attnprof.costmodel.measurements import architecture_key, model_path
    from attnprof.report.fit import print_prediction
    from attnprof.targets.load import load_workload

    workload = load_workload(target)
    architecture = architecture_key(workload)
    machine = machine_info()
    path = model or model_path(profiles_dir, workload.name or workload.target, architecture, machine.fingerprint())
    if model is None and not path.exists():
        raise InputFileError(f"no cost model for {workload.target} on this machine at {path}; run `attnprof fit` first")
    cost_model = read_record(path, CostModel)
    if cost_model.workload_fingerprint != architecture:
        raise InputFileError(
            f"{path}: fitted on another architecture ({cost_model.target}, {cost_model.workload_fingerprint}), "
            f"not {workload.target} ({architecture})"
        )
    given = {
        "dtype": canonical_dtype_name(dtype) if dtype is not None else None,
        "backend": backend,
        "threads": threads,
        "clock": None,  # the clock the model's measurements were timed by
    }
    settings = resolve_settings(
        workload,
        {
            "batch_size": batch_size,
            "seq_len": seq_len,
            "mode": mode,
            "device": device,
            **{
                name: value if value is not None else measured_choice(cost_model, name) for name, value in given.items()
            },
        },
    )
    prediction = predict_config(cost_model, config_of(settings))
    if cost_model.machine.fingerprint() != machine.fingerprint():
        prediction.warnings.append(f"the model was fitted on another machine ({cost_model.machine.cpu})")
    for message in prediction.warnings:
        warn(message)
    if as_json:
        print_result(record_json(prediction))
    else:
        print_prediction(prediction, stdout_console(), layers or None)
