"""CI gate quality of `attnprof check` with its default settings: false alarms on unchanged code
(A/A) and recall of a planted 5% slowdown in one block, with the block named.

A is examples/check_demo_model.py; B is A with a pure-Python loop at the end of
`layers.1.attn`'s forward (benchmarks/slowed_demo.py), sized by calibration to 5% of A's step by
thread CPU time. The loop changes no FLOP count, parameter or tensor, so the exact metrics and
memory pass and only the timing gate can catch it. Nothing is passed that a user would not pass:
the settings are those `attnprof baseline` records with no [tool.attnprof] (gate.runs.gate_settings)
and the judgement is `compare_profiles` with the default CheckOptions (no -t flags).

1. Stored baseline (`attnprof baseline` then `attnprof check --baseline`): A and B profiled
   alternately, each as those commands profile (gate.runs.gate_profile: fresh worker processes,
   interleaved, samples pooled); every pair of an earlier A (the
   baseline) and a later A or B (the check) is judged. Pairs share runs, so the adjacent pairs
   (each run in at most two) are counted apart as the nearly independent sample.
2. `check --against-ref`: a temporary git repository with two commits of the model file (A);
   each check is `profile_against_ref("HEAD~1", ...)` exactly as `check --against-ref HEAD~1`
   runs it, from a subdirectory, with the working tree unchanged (A/A) or with the spin as an
   uncommitted change (A/B), alternating.

A check is a false alarm when its verdict is "regression"; a detection when its verdict is
"regression" and the first module its attribution names is `layers.1.attn` (or inside it).
Rates come with exact (Clopper-Pearson) 95% bounds: what the sample size can claim.

    python -m benchmarks.check_gate [--runs 24] [--sessions 20] [--modes stored,ref] [--save DIR]
    python -m benchmarks.check_gate --judge DIR     # judge saved profiles again, measuring nothing
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from scipy.stats import beta

from attnprof.gate.compare import CheckOptions, attribute, compare_profiles
from attnprof.gate.records import CheckResult
from attnprof.gate.runs import gate_profile, gate_settings, profile_against_ref
from attnprof.profiling.records import Profile, load_profile
from attnprof.profiling.run import prepare
from attnprof.settings import ProjectConfig, Settings
from attnprof.store import write_record
from attnprof.targets.load import load_workload
from benchmarks.slowed_demo import ENV, SLOWED_LAYER, model_file

SLOWED_DEMO = Path(__file__).parent / "slowed_demo.py"
SLOWDOWN = 0.05
CALIBRATION_SPIN = 20_000


def calibrate_spin(settings: Settings) -> tuple[int, float]:
    """Spin iterations that cost SLOWDOWN of A's step, from thread CPU time (immune to the time
    slicing a shared machine adds to wall time), A and B steps interleaved in this process."""
    torch.set_num_threads(1)
    os.environ[ENV] = "0"
    plain = prepare(load_workload(str(SLOWED_DEMO)), settings)
    os.environ[ENV] = str(CALIBRATION_SPIN)
    heavy = prepare(load_workload(str(SLOWED_DEMO)), settings)
    os.environ.pop(ENV)
    cpu: dict[str, list[float]] = {"plain": [], "heavy": []}
    for _ in range(5):
        plain.step()
        heavy.step()
    for _ in range(100):
        for name, prepared in (("plain", plain), ("heavy", heavy)):
            start = time.thread_time()
            prepared.step()
            cpu[name].append(time.thread_time() - start)
    step = statistics.median(cpu["plain"])
    per_iteration = (statistics.median(cpu["heavy"]) - step) / CALIBRATION_SPIN
    spin = max(1, round(SLOWDOWN * step / per_iteration))
    return spin, spin * per_iteration / step


def names_the_block(result: CheckResult) -> bool:
    first = result.attribution[0].layer if result.attribution else ""
    return first == SLOWED_LAYER or first.startswith(SLOWED_LAYER + ".")


@dataclasses.dataclass
class Tally:
    """Checks of one kind and what they said."""

    checks: int = 0
    regressions: int = 0
    named: int = 0
    inconclusive: int = 0
    changes: list[float] = dataclasses.field(default_factory=list)
    # The largest step growth one module alone accounts for (its share significantly larger), the
    # quantity the default gate holds to the step's 3% limit: its margin on either side of it.
    growths: list[float] = dataclasses.field(default_factory=list)

    def add(self, result: CheckResult, growth: float) -> None:
        self.growths.append(growth)
        self.checks += 1
        self.regressions += result.verdict == "regression"
        self.named += result.verdict == "regression" and names_the_block(result)
        self.inconclusive += result.verdict == "inconclusive"
        step = next(m for m in result.metrics if m.metric == "step")
        if step.change is not None:
            self.changes.append(step.change)


def judge(baseline: Profile, current: Profile) -> tuple[CheckResult, float]:
    """The default verdict, and the largest step growth one module alone accounts for."""
    options = CheckOptions()
    named = attribute(baseline, current, limit=-math.inf, alpha=options.alpha)
    return compare_profiles(baseline, current, options), max((a.step_growth for a in named), default=0.0)


def stored_runs(settings: Settings, spin: int, runs: int) -> list[tuple[str, Profile]]:
    """A and B alternately, as `baseline` and `check` profile them."""
    order: list[tuple[str, Profile]] = []
    started = time.perf_counter()
    workload = load_workload(str(SLOWED_DEMO))
    for _ in range(runs):
        for kind, iterations in (("A", 0), ("B", spin)):
            os.environ[ENV] = str(iterations)  # the workers' environment
            order.append((kind, gate_profile(workload, settings)))
    os.environ.pop(ENV)
    print(f"stored: {runs} A + {runs} B profile runs in {time.perf_counter() - started:.0f} s")
    return order


def stored_tallies(order: list[tuple[str, Profile]]) -> dict[str, Tally]:
    """Every earlier A judged against every later run, and the adjacent pairs apart."""
    tallies = {name: Tally() for name in ("A/A all pairs", "A/B all pairs", "A/A adjacent", "A/B adjacent")}
    for i, (kind, baseline) in enumerate(order):
        if kind != "A":
            continue
        for j in range(i + 1, len(order)):
            other_kind, current = order[j]
            pair = "A/A" if other_kind == "A" else "A/B"
            result, growth = judge(baseline, current)
            tallies[f"{pair} all pairs"].add(result, growth)
            if j in (i + 1, i + 2):  # the next B and the next A
                tallies[f"{pair} adjacent"].add(result, growth)
    return tallies


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@contextlib.contextmanager
def model_repository() -> Iterator[Path]:
    """A git repository with two commits of the A model in models/model.py; yields models/."""
    with tempfile.TemporaryDirectory(prefix="check-gate-repo-") as folder:
        repo = Path(folder)
        _git(repo, "init", "--quiet")
        _git(repo, "config", "user.email", "bench@example.com")
        _git(repo, "config", "user.name", "bench")
        models = repo / "models"
        models.mkdir()
        (models / "model.py").write_text(model_file(0))
        _git(repo, "add", ".")
        _git(repo, "commit", "--quiet", "-m", "the model")
        (repo / "README").write_text("a second commit\n")
        _git(repo, "add", ".")
        _git(repo, "commit", "--quiet", "-m", "a second commit")
        yield models


def ref_sessions(settings: Settings, spin: int, sessions: int) -> list[tuple[str, Profile, Profile]]:
    """check --against-ref HEAD~1 from the repository's models/ folder, A/A and A/B alternating:
    (kind, the ref's profile, the working tree's)."""
    checks: list[tuple[str, Profile, Profile]] = []
    started = time.perf_counter()
    here = Path.cwd()
    with model_repository() as models:
        os.chdir(models)
        try:
            workload = load_workload("model.py")
            for _ in range(sessions):
                for kind, iterations in (("A/A", 0), ("A/B", spin)):
                    Path("model.py").write_text(model_file(iterations))  # uncommitted on the current side
                    reference, current, _ = profile_against_ref("HEAD~1", workload, settings)
                    checks.append((kind, reference, current))
        finally:
            os.chdir(here)
    print(f"--against-ref: {sessions} A/A + {sessions} A/B checks in {time.perf_counter() - started:.0f} s")
    return checks


def ref_tallies(checks: list[tuple[str, Profile, Profile]]) -> dict[str, Tally]:
    tallies = {"A/A": Tally(), "A/B": Tally()}
    for kind, reference, current in checks:
        tallies[kind].add(*judge(reference, current))
    return tallies


def save_runs(folder: Path, order: list[tuple[str, Profile]], checks: list[tuple[str, Profile, Profile]]) -> None:
    """The profiles, so that a later version of the judgement can be run on the same measurements."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (kind, profile) in enumerate(order):
        write_record(folder / f"stored-{i:03d}-{kind}.json", profile)
    for i, (kind, reference, current) in enumerate(checks):
        tag = kind.replace("/", "")
        write_record(folder / f"ref-{i:03d}-{tag}-reference.json", reference)
        write_record(folder / f"ref-{i:03d}-{tag}-current.json", current)


def load_runs(folder: Path) -> tuple[list[tuple[str, Profile]], list[tuple[str, Profile, Profile]]]:
    order = [(path.stem.rsplit("-", 1)[1], load_profile(path)) for path in sorted(folder.glob("stored-*.json"))]
    checks = []
    for reference in sorted(folder.glob("ref-*-reference.json")):
        tag = reference.stem.split("-")[2]
        current = reference.with_name(reference.name.replace("-reference", "-current"))
        checks.append((f"{tag[0]}/{tag[1]}", load_profile(reference), load_profile(current)))
    return order, checks


def bounds(hits: int, total: int) -> tuple[float, float]:
    """Exact 95% (two-sided Clopper-Pearson) interval of a rate."""
    low = 0.0 if hits == 0 else float(beta.ppf(0.025, hits, total - hits + 1))
    high = 1.0 if hits == total else float(beta.ppf(0.975, hits + 1, total - hits))
    return low, high


def print_table(mode: str, tallies: dict[str, Tally]) -> None:
    print(f"\n{mode}\n")
    print("| checks | n | verdict regression | of which the block named first | inconclusive | 95% interval "
          "of the rate that counts | step change (median, min–max) | one module's step growth (median, min–max) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, t in tallies.items():
        if not t.checks:
            continue
        counted = t.regressions if name.startswith("A/A") else t.named
        low, high = bounds(counted, t.checks)
        what = "false alarms" if name.startswith("A/A") else "recall (named)"
        print(f"| {name} | {t.checks} | {_rate(t.regressions, t.checks)} | {_rate(t.named, t.checks)} | "
              f"{_rate(t.inconclusive, t.checks)} | {what} {100 * low:.1f}–{100 * high:.1f}% | {_spread(t.changes)} | "
              f"{_spread(t.growths)} |")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):+.1%} ({min(values):+.1%}–{max(values):+.1%})" if values else "-"


def _rate(count: int, total: int) -> str:
    return f"{count}/{total} ({count / total:.1%})"


def _uptime() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=24, help="Stored mode: profile runs of each of A and B.")
    parser.add_argument("--sessions", type=int, default=20, help="--against-ref mode: checks of each of A/A and A/B.")
    parser.add_argument("--modes", default="stored,ref", help="Comma-separated: stored, ref.")
    parser.add_argument("--save", type=Path, help="Save every profile in this folder.")
    parser.add_argument("--judge", type=Path, help="Measure nothing: judge the profiles a --save run left here.")
    args = parser.parse_args()
    modes = set(args.modes.split(","))

    if args.judge is not None:
        order, checks = load_runs(args.judge)
    else:
        settings = gate_settings(load_workload(str(SLOWED_DEMO)), ProjectConfig({}, None, {}), {})
        spin, injected = calibrate_spin(settings)
        print(f"load average {_uptime()}; settings: repeats {settings.repeats}, threads {settings.threads}, "
              f"clock {settings.clock}, reference probe {settings.reference_probe}, warmup {settings.warmup}")
        print(f"planted: {spin} spin iterations at the end of {SLOWED_LAYER}'s forward = {injected:+.1%} of A's "
              "step by thread CPU time")
        order = stored_runs(settings, spin, args.runs) if "stored" in modes else []
        print(f"load average {_uptime()}")
        checks = ref_sessions(settings, spin, args.sessions) if "ref" in modes else []
        print(f"load average {_uptime()}")
        if args.save is not None:
            save_runs(args.save, order, checks)
    if order:
        print_table("stored baseline (attnprof baseline, then attnprof check --baseline)", stored_tallies(order))
    if checks:
        print_table("attnprof check --against-ref HEAD~1", ref_tallies(checks))


if __name__ == "__main__":
    main()
