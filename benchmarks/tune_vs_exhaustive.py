"""Tuned plan vs the exhaustive optimum, and the cost of an end-to-end `attnprof tune`.

Part 1 (global knobs): every configuration of backend x dtype x micro-batch x threads of
zoo:decoder is measured (the exhaustive table); `tune` then runs with the same space and budget.
The tuned plan is looked up in the exhaustive table, so both sides are judged by the same
measurements: gap = table[tuned] / table[optimum] - 1. Target: gap <= 2% while measuring
<= 10% of the configurations.

Part 2 (head pruning): a two-layer zoo model with 8 heads per layer; every per-layer head count is
measured (latency and relative output error vs the unpruned model); `tune --knobs heads` with a
quality limit is judged the same way. Needs plan application (attnprof.apply).

Part 3: wall time of `python -m attnprof tune zoo:decoder` with its defaults. Target: <= 2 min.

Part 4 (trust under load): for hf:llama, hf:gpt2 and a Qwen2 model file built from a small config,
every configuration of tune's default space is applied as `attnprof apply` builds it and all are
timed together in interleaved, shuffled rounds (the exhaustive table); `tune` with its defaults
then runs `--runs` times while a second process keeps one core busy (`--busy N`: N such
processes). Per workload: how many runs land within 2% of the table's optimum (target: 9 of
10), the share of the space tune measured (target: <= 15%), and how often a plan that changes
nothing, timed against the baseline as tune times its candidates, reports a speed-up interval
containing 1; and how many held-out candidates their predicted 1σ covered (~68% when σ is
honest). The part starts with an empty tune history (a scratch attnprof cache), so run 1 of
each workload probes and later runs may price from what earlier ones measured; the share is
shown for run 1 and for the rest apart (`--no-history`: every run probes).

Run: PYTHONPATH=. python benchmarks/tune_vs_exhaustive.py [--part 1|2|3|4] [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnprof.measure.timing import time_call
from attnprof.plans.records import DEFAULT_MAX_ERROR, PlanChoices
from attnprof.plans.verify import applied_settings, applied_workload
from attnprof.profiling.run import prepare
from attnprof.settings import Settings, resolve_settings
from attnprof.targets.load import load_workload
from attnprof.targets.workload import Inputs, Workload
from attnprof.targets.zoo import random_token_ids
from attnprof.targets.zoo.models import ZooConfig, ZooTransformer
from attnprof.tuning.budget import parse_budget
from attnprof.tuning.compare import TimedSide, interleave, paired_ratio, side_of
from attnprof.tuning.estimate import profile_choice
from attnprof.tuning.loop import TuneRequest, tune
from attnprof.tuning.space import DeviceFacts, GlobalChoice, build_space, default_plan_knobs, knob_names
from attnprof.tuning.verify import OutputChecker

GLOBAL_KNOBS = list(knob_names("choice", "micro_batch"))  # the one-device global knobs
ROUNDS = 5


def part_global(quick: bool, table_path: Path | None, measure_only: bool) -> None:
    workload = load_workload("zoo:decoder")
    batch = 16 if quick else 32
    settings = resolve_settings(
        workload, {"batch_size": batch, "seq_len": 16, "repeats": 3, "warmup": 1, "threads": 1, "backend": "flash"}
    )
    facts = DeviceFacts.probe("cpu")
    space = build_space(facts, [], settings, GLOBAL_KNOBS)
    print(f"space: {len(space.globals)} configurations (backend x dtype x micro-batch x threads)")

    table: dict[GlobalChoice, tuple[float, float]] = {}
    exhaustive_s = 0.0
    if table_path is not None and table_path.exists():  # a saved exhaustive table: measure it once
        saved = json.loads(table_path.read_text())
        exhaustive_s = saved["seconds"]
        table = {GlobalChoice(**row["choice"]): (row["latency_ms"], row["memory_bytes"]) for row in saved["rows"]}
    else:
        started = time.perf_counter()
        for choice in space.globals:
            profile = profile_choice(workload, settings, choice)
            assert profile.totals.time_ms is not None
            table[choice] = (
                batch // choice.batch_size * profile.totals.time_ms.median,
                float(profile.totals.peak_memory_bytes),
            )
            print(f"  {len(table)}/{len(space.globals)} {choice.as_config()} {table[choice]}", flush=True)
        exhaustive_s = time.perf_counter() - started
        if table_path is not None:
            rows = [
                {"choice": dataclasses.asdict(c), "latency_ms": t, "memory_bytes": m} for c, (t, m) in table.items()
            ]
            table_path.write_text(json.dumps({"seconds": exhaustive_s, "rows": rows}))
    if measure_only:
        return
    fp32_full = table[GlobalChoice("flash", "fp32", batch, 1)][1]
    limit = 0.6 * fp32_full
    feasible = {c: v for c, v in table.items() if v[1] <= limit * 0.999}
    optimum = min(feasible, key=lambda c: feasible[c][0])

    started = time.perf_counter()
    budget = parse_budget([f"memory={int(limit)}"])
    outcome = tune(workload, settings, TuneRequest(budget, "latency", GLOBAL_KNOBS, top_k=2))
    tune_s = time.perf_counter() - started
    assert outcome.plan is not None, [v.reason for v in outcome.verifications]
    chosen = outcome.plan.choices
    tuned = GlobalChoice(chosen.backend, chosen.dtype, chosen.batch_size or batch, chosen.threads)
    gap = table[tuned][0] / table[optimum][0] - 1
    ranked = sorted(feasible, key=lambda c: feasible[c][0])
    print(f"memory limit {limit / 2**20:.1f} MiB (60% of fp32 at micro-batch {batch}); {len(feasible)} fit")
    print(f"exhaustive optimum: {optimum} {table[optimum][0]:.1f} ms")
    print(f"tuned plan:         {tuned} {table[tuned][0]:.1f} ms (rank {ranked.index(tuned) + 1} of {len(ranked)})")
    for v in outcome.verifications:
        measured = v.measured.latency_ms if v.measured else None
        print(f"  candidate {v.candidate.describe()}: predicted {v.predicted.latency_ms} measured {measured}", v.reason)
    print(
        f"| backend x dtype x micro-batch x threads, zoo:decoder B{batch} S16 | {len(table)} | "
        f"{outcome.measurements} ({outcome.measurements / len(table):.0%}) | {gap:+.1%} | "
        f"{exhaustive_s:.0f} s | {tune_s:.0f} s |"
    )


def part_heads(quick: bool) -> None:
    config = ZooConfig(hidden_size=128, num_layers=2, num_heads=8, num_kv_heads=8)

    def build_model(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        torch.manual_seed(0)
        return ZooTransformer(config).to(device=device, dtype=dtype)

    def make_inputs(batch_size: int, seq_len: int, device: torch.device, dtype: torch.dtype) -> Inputs:
        return (random_token_ids(batch_size, seq_len, config.vocab_size, device),), {}

    workload = Workload("bench:heads", "bench-heads", build_model, make_inputs)
    settings = resolve_settings(
        workload, {"batch_size": 4, "seq_len": 128, "repeats": 5, "warmup": 1, "threads": 1, "backend": "flash"}
    )
    checker = OutputChecker(workload, settings)
    names = ["layers.0.attn", "layers.1.attn"]
    kept_values = range(1, 9) if not quick else (2, 4, 6, 8)
    started = time.perf_counter()
    steps = {}
    errors = {}
    for kept in itertools.product(kept_values, repeat=len(names)):
        choices = PlanChoices(prune_heads={n: 8 - k for n, k in zip(names, kept, strict=True) if k < 8})
        steps[kept] = prepare(applied_workload(workload, settings, choices), settings).step
        errors[kept] = checker.check(dataclasses.replace(choices, backend="flash"))[1]
    # Every configuration is timed in each of ROUNDS interleaved rounds; contention on a shared
    # machine only ever slows a step down, so the fastest round's median is the table's figure.
    samples: dict[tuple[int, ...], list[float]] = {k: [] for k in steps}
    for _ in range(ROUNDS):
        for kept, step in steps.items():
            step()  # warm
            samples[kept].append(statistics.median(1e3 * time_call(step, torch.device("cpu")) for _ in range(3)))
    table = {k: (min(samples[k]), errors[k]) for k in steps}
    exhaustive_s = time.perf_counter() - started
    quality = 0.5
    feasible = {k: v for k, v in table.items() if v[1] <= quality}
    optimum = min(feasible, key=lambda k: feasible[k][0])
    started = time.perf_counter()
    budget = parse_budget([], max_quality_loss=f"{quality:g}")
    outcome = tune(workload, settings, TuneRequest(budget, "latency", ["heads"], top_k=3))
    tune_s = time.perf_counter() - started
    assert outcome.plan is not None, [v.reason for v in outcome.verifications]
    prune = outcome.plan.choices.prune_heads  # the removed heads' indices, per layer
    tuned = tuple(8 - len(prune.get(n, [])) for n in names)  # type: ignore[arg-type]
    gap = table[tuned][0] / table[optimum][0] - 1
    print(f"exhaustive optimum (kept heads per layer): {optimum} {table[optimum]}")
    print(f"tuned plan: {tuned} {table[tuned]}")
    print(
        f"| head pruning (kept heads per layer), 2-layer zoo model, quality loss <= {quality:g} | {len(table)} | "
        f"{outcome.measurements} ({outcome.measurements / len(table):.0%}) | {gap:+.1%} | "
        f"{exhaustive_s:.0f} s | {tune_s:.0f} s |"
    )


def part_end_to_end() -> None:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "attnprof", "tune", "zoo:decoder", "--budget", "memory=1GiB"],
            cwd=folder,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "NO_COLOR": "1"},
            check=False,
        )
        elapsed = time.perf_counter() - started
    print(result.stdout[-3000:])
    print(result.stderr[-2000:])
    command = "`attnprof tune zoo:decoder --budget memory=1GiB` (defaults)"
    print(f"| {command} | exit {result.returncode} | {elapsed:.0f} s |")


TRUST_TARGETS = ("hf:llama", "hf:gpt2", str(Path(__file__).resolve().parent / "models" / "qwen2_small.py"))
TABLE_ROUNDS = 8


def _plan_of(choice: GlobalChoice, batch: int) -> PlanChoices:
    fields = dataclasses.asdict(choice)
    return PlanChoices(**{**fields, "batch_size": None if choice.batch_size == batch else choice.batch_size},
                       precision="cast")


def _busy() -> subprocess.Popen[bytes]:
    """The load: a process keeping one core busy for the whole part."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def part_trust(runs: int, targets: tuple[str, ...], verify_seconds: float, busy: int, history: bool) -> None:
    """Per workload: the whole default tune space applied as apply builds it and timed in
    interleaved rounds (the exhaustive table), then `tune` `runs` times, under a busy core. The
    runs go round the workloads (run 1 of each, then run 2, ...), so a run cut short by time still
    has every workload."""
    os.environ["ATTNPROF_CACHE_DIR"] = tempfile.mkdtemp(prefix="attnprof-cache-")  # an empty tune history
    loads = [_busy() for _ in range(busy)]
    try:
        trials = [_Trust(target, verify_seconds, history) for target in targets]
        for run in range(runs):
            for trial in trials:
                trial.run(run)
        for trial in trials:
            trial.summary()
    finally:
        for load in loads:
            load.kill()
            load.wait()


def _load() -> str:
    return "load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


class _Trust:
    """One workload of part 4: its exhaustive table, then tune runs judged against it."""

    def __init__(self, target: str, verify_seconds: float, history: bool) -> None:
        self.target = target
        self.verify_seconds = verify_seconds
        self.history = history
        self.workload = load_workload(target)
        self.settings = settings = resolve_settings(self.workload, {"repeats": 3, "warmup": 1})
        self.knobs = default_plan_knobs(settings.mode, 1)
        space = build_space(DeviceFacts.probe(settings.device), [], settings, self.knobs)
        self.size = len(space.globals)
        self.table = _table(self.workload, settings, space.globals)
        self.optimum = min(self.table, key=self.table.__getitem__)
        self.within, self.within_paired, self.fractions, self.noop_contains_one, self.runs = 0, 0, [], 0, 0
        self.covered = self.held_out = 0  # held-out candidates, and how many their predicted 1σ covered
        print(f"{target}: {self.size} configurations, {len(self.table)} within the default max error; "
              f"optimum {self.optimum.as_config()} {self.table[self.optimum]:.2f} ms; {_load()}", flush=True)

    def run(self, run: int) -> None:
        settings = self.settings
        started = time.perf_counter()
        request = TuneRequest(parse_budget([]), "latency", self.knobs, verify_seconds=self.verify_seconds,
                              use_history=self.history)
        outcome = tune(self.workload, settings, request)
        tune_s = time.perf_counter() - started
        assert outcome.plan is not None, [v.reason for v in outcome.verifications]
        c = outcome.plan.choices
        tuned = GlobalChoice(c.backend, c.dtype, c.batch_size or settings.batch_size, c.threads)
        gap = self.table[tuned] / self.table[self.optimum] - 1
        paired = 0.0 if tuned == self.optimum else self._head_to_head(tuned) - 1
        self.runs += 1
        self.within += gap <= 0.02
        self.within_paired += paired <= 0.02
        self.fractions.append(outcome.measurements / self.size)
        self.covered += outcome.calibration.covered
        self.held_out += outcome.calibration.points
        self.noop_contains_one += _noop_contains_one(self.workload, settings, self.verify_seconds)
        ratio = outcome.plan.speedup
        recalled = "earlier tune run" in outcome.estimator_source
        print(f"  {self.target} run {run + 1}: {tuned.as_config()} gap {gap:+.1%} (table), {paired:+.1%} "
              f"(head to head), {outcome.measurements} measured "
              f"({self.fractions[-1]:.0%}{', priced from the history' if recalled else ''}), "
              f"{outcome.rounds} rounds, speed-up "
              f"{f'x{ratio.value:.2f} [{ratio.low:.2f}, {ratio.high:.2f}]' if ratio else '-'}, {tune_s:.0f} s, "
              f"{_load()}; so far {self.within}/{self.runs} within 2% ({self.within_paired} head to head)", flush=True)
        for v in outcome.verifications:
            c = v.choices
            key = GlobalChoice(c.backend, c.dtype, c.batch_size or settings.batch_size, c.threads)
            measured = v.measured.latency_ms if v.measured else None
            print(f"    {key.as_config()}: predicted {v.predicted.latency_ms:.2f} measured {measured} "
                  f"table {self.table.get(key, math.nan):.2f} {'tied' if v.tied else ''} {v.reason}", flush=True)
        for note in outcome.plan.notes:
            if note.startswith("tie of"):
                print(f"    contest: {note}", flush=True)

    def _head_to_head(self, tuned: GlobalChoice) -> float:
        """tuned / optimum step time, the two timed against each other in interleaved rounds right
        after the run (the table is minutes old by then, and the load has moved)."""
        sides = [_side(self.workload, self.settings, choice) for choice in (self.optimum, tuned)]
        interleave(sides, self.settings.clock, self.verify_seconds, self.settings.warmup)
        return paired_ratio(sides[1].samples_ms, sides[0].samples_ms).value

    def summary(self) -> None:
        later = self.fractions[1:]
        print(f"| {self.target} | {self.size} | {self.runs} | {self.within}/{self.runs} | "
              f"{self.within_paired}/{self.runs} | {self.fractions[0] if self.fractions else math.nan:.0%} | "
              f"{min(later, default=math.nan):.0%}–{max(later, default=math.nan):.0%} | "
              f"{self.noop_contains_one}/{self.runs} | {self.covered}/{self.held_out} |", flush=True)


def _side(workload: Workload, settings: Settings, choice: GlobalChoice) -> TimedSide:
    """One configuration built as apply builds it, ready to be timed for whole batches."""
    plan = _plan_of(choice, settings.batch_size)
    run_settings = applied_settings(settings, plan)
    return side_of(str(choice.as_config()), applied_workload(workload, run_settings, plan), run_settings,
                   settings.batch_size // run_settings.batch_size)


def _table(workload: Workload, settings: Settings, space: list[GlobalChoice]) -> dict[GlobalChoice, float]:
    """Every configuration within the default max error, applied as apply builds it, timed in
    TABLE_ROUNDS interleaved rounds: its median whole-batch step time."""
    checker = OutputChecker(workload, settings)
    sides, choices = [], []
    errors: dict[tuple[str, str], float] = {}
    for choice in space:
        key = (choice.dtype, choice.backend)
        if key not in errors:
            cast = PlanChoices(choice.dtype, "cast", choice.backend)
            errors[key] = 0.0 if choice.dtype == "fp32" else checker.check(cast)[1]
        if not errors[key] <= DEFAULT_MAX_ERROR:
            continue  # tune screens these out too: not in the optimum's running
        sides.append(_side(workload, settings, choice))
        choices.append(choice)
    interleave(sides, settings.clock, math.inf, settings.warmup, min_rounds=TABLE_ROUNDS, max_rounds=TABLE_ROUNDS)
    return {c: side.median_ms for c, side in zip(choices, sides, strict=True)}


def _noop_contains_one(workload: Workload, settings: Settings, verify_seconds: float) -> bool:
    """A plan that changes nothing, timed against the baseline as tune times candidates: its
    speed-up interval must contain 1."""
    noop = PlanChoices()
    run_settings = applied_settings(settings, noop)
    applied = applied_workload(workload, run_settings, noop)
    sides = [side_of("baseline", workload, settings), side_of("no-op", applied, run_settings)]
    interleave(sides, settings.clock, verify_seconds, settings.warmup)
    ratio = paired_ratio(sides[0].samples_ms, sides[1].samples_ms)
    return ratio.low <= 1.0 <= ratio.high


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", type=int, choices=(1, 2, 3, 4))
    parser.add_argument("--runs", type=int, default=10, help="part 4: tune runs per workload")
    parser.add_argument("--target", action="append", help="part 4: workloads (default: hf:llama, hf:gpt2, Qwen2)")
    parser.add_argument("--verify-seconds", type=float, default=20.0, help="part 4: tune's comparison budget")
    parser.add_argument("--busy", type=int, default=1, help="part 4: processes keeping a core busy alongside")
    parser.add_argument("--no-history", action="store_true", help="part 4: every tune run probes afresh")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table", type=Path, help="JSON file caching part 1's exhaustive measurements")
    parser.add_argument("--measure-only", action="store_true", help="part 1: only the exhaustive table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part in (None, 1):
        part_global(args.quick, args.table, args.measure_only)
    if args.part in (None, 2):
        part_heads(args.quick)
    if args.part in (None, 3):
        part_end_to_end()
    if args.part in (None, 4):
        part_trust(args.runs, tuple(args.target or TRUST_TARGETS), args.verify_seconds, args.busy,
                    not args.no_history)


if __name__ == "__main__":
    main()
