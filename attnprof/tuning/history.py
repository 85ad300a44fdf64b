"""What earlier tune runs of a workload measured on this machine: the prior that stands in for probes.

A tune run times its probes, and later its verified candidates, in interleaved rounds with the
baseline (the workload as it runs); the ratio of each global choice's micro-step to the
baseline's step is what the run learnt about how the machine treats that choice. Each run
appends those ratios (with each choice's measured memory) as one line to a JSON Lines file in
attnprof's cache, beside the machine's calibration: knowledge of this machine, keyed by the
workload's architecture, the machine fingerprint (which includes the torch version) and the
baseline settings. A later run of the same workload whose probes were all timed before, and
whose baseline still runs at the speed those runs saw, prices the choices from the pooled ratios
instead of probing again: a space of 24 then costs the baseline and the candidates verification
measures, not the 6 probes a main-effects design needs.
Every plan is still chosen by its own measurement in this run; the prior only decides which
candidates are worth measuring.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from attnprof.errors import AttnprofError
from attnprof.machine import machine_info
from attnprof.measure.hardware import cache_dir
from attnprof.store import append_jsonl, read_jsonl_records, short_hash, slug, timestamp
from attnprof.tuning.space import GlobalChoice

if TYPE_CHECKING:  # a Workload means torch
    from attnprof.profiling.records import Profile
    from attnprof.settings import Settings
    from attnprof.targets.workload import Workload

# The latest runs read, and the latest observations of a choice pooled among them: older ones
# describe a machine that has moved on. A run that only verifies adds the few choices it compared,
# so a probe's ratio lasts HISTORY_RUNS runs; after that the next run probes afresh.
HISTORY_RUNS = 20
HISTORY_SAMPLES = 5
# Floor of a remembered log-ratio's σ: the winner's interleaved speed-up over the baseline moved
# by σ 0.04-0.07 (log) between tune runs a minute apart at load ≈ 2.5 (benchmarks/RESULTS.md).
HISTORY_SIGMA = 0.10
# The baseline this far (×1.5 or ÷1.5) from the speed the remembered runs saw: the machine's
# load has changed what its choices cost (a busy core turns two threads from a gain into a
# loss), so the run probes afresh.
HISTORY_DRIFT = math.log(1.5)
# σ of the predictions is scaled by the root-mean-square standardised error of the held-out
# candidates of the remembered runs once they number this many, never by less than
# MIN_SIGMA_SCALE (a few lucky points must not make every later price overconfident).
MIN_CALIBRATION_POINTS = 5
MIN_SIGMA_SCALE = 0.5


@dataclass(frozen=True)
class RememberedChoice:
    """One global choice as a run measured it."""

    choice: GlobalChoice
    log_ratio: float  # ln(its micro-step / the baseline's step), from interleaved rounds
    peak_memory_bytes: int
    param_bytes: int


@dataclass(frozen=True)
class TuneRun:
    """One line of the history: what one tune run measured."""

    key: str  # the baseline settings the ratios are relative to
    created: str
    baseline_ms: float  # the baseline's profiled median step: how fast the machine ran then
    choices: list[RememberedChoice] = field(default_factory=list)
    held_out: int = 0  # candidates predicted before they were measured
    z_square_sum: float = 0.0  # Σ ((measured - predicted) / σ)², σ as priced before any scaling


@dataclass(frozen=True)
class Prior:
    """A choice's ratio pooled over the remembered runs, and its latest memory."""

    log_ratio: float
    sigma: float  # of the log-ratio
    peak_memory_bytes: int
    param_bytes: int
    runs: int


class TuneHistory:
    """The history file of one workload on this machine, read and appended for one settings key."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.note = ""  # why the history was not used, when it was there but could not be
        self._runs: list[TuneRun] | None = None  # read once: a run prices from the history as it began

    @classmethod
    def of(cls, workload: Workload, settings: Settings) -> TuneHistory:
        from attnprof.costmodel.measurements import architecture_key

        # The machine's fingerprint counts the threads torch runs with now, which tune itself turns:
        # the history is of the machine, whatever this process's thread count at the moment.
        machine = dataclasses.replace(machine_info(), threads=os.cpu_count() or 0).fingerprint()
        name = f"{slug(workload.name or workload.target)}-{architecture_key(workload)}-{machine}"
        path = cache_dir() / "tune-history" / f"{name}.jsonl"
        parts = [settings.mode, settings.batch_size, settings.seq_len, settings.device, settings.dtype,
                 settings.backend, settings.threads]
        return cls(path, short_hash(parts))

    def runs(self) -> list[TuneRun]:
        """The latest HISTORY_RUNS runs with this key; none when the file cannot be read (noted)."""
        if self._runs is None:
            try:
                runs, _ = read_jsonl_records(self.path, TuneRun, inside=self.path.parent)
            except AttnprofError as exc:
                self.note = f"the tune history could not be read ({exc}); probing afresh"
                runs = []
            self._runs = [run for run in runs if run.key == self.key][-HISTORY_RUNS:]
        return self._runs

    def priors(self, baseline_ms: float) -> dict[GlobalChoice, Prior]:
        """Each remembered choice's pooled ratio; empty when nothing is remembered, or when the
        baseline now runs more than HISTORY_DRIFT away from the speed the remembered runs saw."""
        runs = self.runs()
        if not runs:
            return {}
        then = statistics.median(run.baseline_ms for run in runs[-HISTORY_SAMPLES:])
        if then > 0 and abs(math.log(baseline_ms / then)) > HISTORY_DRIFT:
            self.note = (f"the baseline runs at {baseline_ms:.3g} ms, {then:.3g} ms in the {len(runs)} remembered "
                         "run(s): the machine has changed; probing afresh")
            return {}
        pooled: dict[GlobalChoice, list[RememberedChoice]] = {}
        for run in runs:
            for remembered in run.choices:
                pooled.setdefault(remembered.choice, []).append(remembered)
        priors = {}
        for choice, seen in pooled.items():
            seen = seen[-HISTORY_SAMPLES:]
            logs = [r.log_ratio for r in seen]
            spread = statistics.stdev(logs) if len(logs) > 1 else 0.0
            latest = seen[-1]
            priors[choice] = Prior(statistics.fmean(logs), max(spread, HISTORY_SIGMA),
                                   latest.peak_memory_bytes, latest.param_bytes, len(seen))
        return priors

    def sigma_scale(self) -> float:
        """What the remembered runs' held-out errors say σ should be multiplied by (1 until they
        hold MIN_CALIBRATION_POINTS)."""
        runs = self.runs()
        points = sum(run.held_out for run in runs)
        if points < MIN_CALIBRATION_POINTS:
            return 1.0
        return max(math.sqrt(sum(run.z_square_sum for run in runs) / points), MIN_SIGMA_SCALE)

    def append(self, baseline: Profile, log_ratios: dict[GlobalChoice, float],
               profiles: dict[GlobalChoice, Profile], unscaled_z: list[float]) -> str:
        """Remember one run (`unscaled_z`: its held-out errors against σ before any scaling);
        returns a note when the cache cannot be written (tune goes on without)."""
        assert baseline.totals.time_ms is not None
        choices = [
            RememberedChoice(choice, log_ratio, profiles[choice].totals.peak_memory_bytes,
                             profiles[choice].totals.param_bytes)
            for choice, log_ratio in log_ratios.items()
            if choice in profiles and math.isfinite(log_ratio)
        ]
        if not choices:
            return ""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            run = TuneRun(self.key, timestamp(), baseline.totals.time_ms.median, choices, len(unscaled_z),
                          sum(z * z for z in unscaled_z))
            append_jsonl(self.path, run, inside=self.path.parent)
        except (OSError, AttnprofError) as exc:
            return f"this run's measurements were not remembered ({exc})"
        return ""
