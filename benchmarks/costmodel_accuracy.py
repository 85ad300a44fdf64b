"""Cost model accuracy on held-out configurations: fit on a sweep, predict configurations
measured separately, and compare.

For each workload the sweep design (corners, centre and space-filling shapes, each under every
dtype x backend combination) and a held-out set (other shapes inside the same ranges, each
under every combination, so each held-out shape is one top-1 decision) are measured in one
interleaved order, so drift in the machine's speed affects both alike. The model is fitted on
the sweep only; held-out predictions come from the model alone (features by its feature law,
no run of the model), exactly as `attnprof predict` makes them.

    python benchmarks/costmodel_accuracy.py [--max-measurements 24] [--held-out-shapes 4]
        [--repeats 7] [--targets zoo:decoder,hf:llama,zoo:encoder]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attnprof.costmodel.design import design_points
from attnprof.costmodel.fit import (
    cross_validate,
    fit_cost_model,
    predict_config,
    summarise_validation,
    validation_point,
)
from attnprof.costmodel.knobs import Knob, config_of
from attnprof.costmodel.measure import profiler_measure_point
from attnprof.costmodel.measurements import MeasurementStore, architecture_key, measurement_key
from attnprof.costmodel.records import CostModel, Measurement
from attnprof.costmodel.sweep import run_sweep
from attnprof.machine import machine_info
from attnprof.settings import Settings, settings_for
from attnprof.targets.load import load_workload

KNOBS = {
    "batch_size": Knob("batch_size", low=1, high=4),
    "seq_len": Knob("seq_len", low=32, high=256),
    "dtype": Knob("dtype", choices=("fp32", "bf16")),
    "backend": Knob("backend", choices=("math", "flash")),
}


def held_out_points(count: int, taken: set[tuple[int, int]], seed: int) -> list[dict[str, int | str]]:
    """`count` shapes drawn log-uniformly inside the ranges, none of them a sweep shape."""
    rng = random.Random(seed)
    batch, seq = KNOBS["batch_size"], KNOBS["seq_len"]
    shapes: list[tuple[int, int]] = []
    while len(shapes) < count:
        shape = (
            round(math.exp(rng.uniform(math.log(batch.low), math.log(batch.high)))),
            round(math.exp(rng.uniform(math.log(seq.low), math.log(seq.high)))),
        )
        if shape not in taken and shape not in shapes:
            shapes.append(shape)
    return [
        {"batch_size": b, "seq_len": s, "dtype": dtype, "backend": backend}
        for b, s in shapes
        for dtype in KNOBS["dtype"].choices
        for backend in KNOBS["backend"].choices
    ]


def interleave(first: list[dict[str, int | str]], second: list[dict[str, int | str]]) -> list[dict[str, int | str]]:
    """Alternate the two lists in proportion, so both are measured across the whole run."""
    merged = []
    ratio = len(first) / max(len(second), 1)
    i = j = 0
    while i < len(first) or j < len(second):
        if j >= len(second) or (i < len(first) and i < ratio * (j + 1)):
            merged.append(first[i])
            i += 1
        else:
            merged.append(second[j])
            j += 1
    return merged


def evaluate(target: str, options: argparse.Namespace, folder: Path) -> dict[str, object]:
    workload = load_workload(target)
    base = Settings(warmup=1, repeats=options.repeats, threads=options.threads, clock=options.clock)
    sweep = [config_of(settings_for(base, p)) for p in design_points(KNOBS, options.max_measurements)]
    taken = {(int(c["batch_size"]), int(c["seq_len"])) for c in sweep}
    held = [config_of(settings_for(base, p)) for p in held_out_points(options.held_out_shapes, taken, seed=1)]
    machine = machine_info()
    architecture = architecture_key(workload)
    measure = profiler_measure_point(
        workload, base, workload_fingerprint=architecture, machine_fingerprint=machine.fingerprint()
    )
    store = MeasurementStore(folder / f"{workload.name}-{architecture}.jsonl")
    started = time.monotonic()
    measured = {m.key: m for m in run_sweep(interleave(sweep, held), measure, store).measurements}
    seconds = time.monotonic() - started
    fit_set = [measured[measurement_key(c)] for c in sweep]
    held_set = [measured[measurement_key(c)] for c in held]

    def fit(measurements: Sequence[Measurement]) -> CostModel:
        return fit_cost_model(measurements, target=target, workload_fingerprint=architecture, machine=machine)

    model = fit(fit_set)
    model.validation = cross_validate(fit_set, fit)
    details = []
    for m in held_set:
        if not m.feasible or m.time_ms is None or m.peak_memory_bytes is None:
            continue
        details.append(validation_point(m, predict_config(model, m.config)))
    held_result = summarise_validation(details, method="held out", folds=1)
    # The noise floor: the same held-out configurations measured once more, later. No model can
    # predict one measurement better than another measurement of the same configuration does.
    repeat_errors = []
    for m in held_set:
        again = measure(m.config)
        if m.time_ms is not None and again.time_ms is not None:
            repeat_errors.append(abs(again.time_ms.median - m.time_ms.median) / m.time_ms.median)
    regrets = []
    for shape in {(d.config["batch_size"], d.config["seq_len"]) for d in details}:
        choices = [d for d in details if (d.config["batch_size"], d.config["seq_len"]) == shape]
        best = min(d.measured_ms for d in choices)
        regrets.append(min(choices, key=lambda d: d.predicted_ms).measured_ms / best - 1)
    spreads = [(m.time_ms.p90 - m.time_ms.p10) / m.time_ms.median for m in measured.values() if m.time_ms is not None]
    return {
        "target": target,
        "fit_points": len(fit_set),
        "held_points": len(details),
        "held": held_result,
        "cv": model.validation,
        "regret": max(regrets) if regrets else float("nan"),
        "spread": sorted(spreads)[len(spreads) // 2],
        "noise_floor": sum(repeat_errors) / len(repeat_errors) if repeat_errors else float("nan"),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="zoo:decoder,hf:llama,zoo:encoder")
    parser.add_argument("--max-measurements", type=int, default=24)
    parser.add_argument("--held-out-shapes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="How steps are timed.")
    parser.add_argument("--keep", type=Path, help="Keep the measurement stores in this folder (resumable).")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for target in options.targets.split(","):
            row = evaluate(target, options, options.keep or Path(scratch))
            rows.append(row)
            print(f"done {target} in {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    print(
        "| workload | fitted on | held-out configs | latency MAPE | memory MAPE | Spearman | top-1 | "
        "worst top-1 regret | CV latency MAPE | CV memory MAPE | CV top-1 | noise floor | median p10–p90 spread |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        held, cv = row["held"], row["cv"]
        print(
            f"| {row['target']} | {row['fit_points']} | {row['held_points']} | {held.latency_mape:.1f}% | "
            f"{held.memory_mape:.2f}% | {held.spearman:.3f} | {held.top1_agreement:.0%} "
            f"({held.top1_decisions} shapes) | +{100 * row['regret']:.1f}% | {cv.latency_mape:.1f}% | "
            f"{cv.memory_mape:.2f}% | {cv.top1_agreement:.0%} | {100 * row['noise_floor']:.1f}% | "
            f"{100 * row['spread']:.0f}% |"
        )


if __name__ == "__main__":
    main()
