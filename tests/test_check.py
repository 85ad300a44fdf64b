"""Regression statistics and verdicts on seeded synthetic samples and hand-built profiles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from attnprof.errors import MachineMismatch, UsageError
from attnprof.gate.compare import CheckOptions, compare_profiles, summary
from attnprof.gate.records import CheckResult
from attnprof.gate.stats import (
    compare_samples,
    detectable_slowdown,
    min_repeats_for,
    parse_threshold,
    repeats_to_settle,
    robust_noise,
)
from attnprof.profiling.records import Profile, TimeStats
from attnprof.report.check import check_markdown
from attnprof.settings import Settings
from attnprof.store import from_json_dict, to_json_dict
from tests.samples import lognormal, make_profile, other_machine


def options(*thresholds: str, **kwargs: object) -> CheckOptions:
    return CheckOptions(thresholds=tuple(parse_threshold(t) for t in thresholds), **kwargs)  # type: ignore[arg-type]


# --- threshold strings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern", "statistic", "limit"),
    [
        ("median:5%", "*", "median", 0.05),
        ("p90:10%", "*", "p90", 0.10),
        ("memory:2%", "*", "memory", 0.02),
        ("layers.*attn*:median:8%", "layers.*attn*", "median", 0.08),
        ("step:mean:2.5%", "step", "mean", 0.025),
        ("layers.*norm*:median:off", "layers.*norm*", "median", None),
        (" MEDIAN:0% ", "*", "median", 0.0),
    ],
)
def test_threshold_strings_parse(text: str, pattern: str, statistic: str, limit: float | None) -> None:
    threshold = parse_threshold(text)
    assert (threshold.pattern, threshold.statistic) == (pattern, statistic)
    assert threshold.limit == pytest.approx(limit)


@pytest.mark.parametrize(
    "text", ["median5%", "median:5", "p95:5%", "median:-5%", "median:x%", ":median:5%", ""]
)
def test_bad_threshold_strings_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="threshold"):
        parse_threshold(text)


def test_last_matching_threshold_wins_per_statistic() -> None:
    opts = options("median:5%", "p90:10%", "layers.*attn*:median:8%", "memory:2%")
    assert opts.limits("layers.blocks.0.attn", "time") == {"median": 0.08, "p90": 0.10}
    assert opts.limits("layers.blocks.0.mlp", "time") == {"median": 0.05, "p90": 0.10}
    assert opts.limits("peak_memory", "memory") == {"memory": 0.02}


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="alpha"):
        CheckOptions(alpha=0.0)
    with pytest.raises(UsageError, match="metric"):
        CheckOptions(metrics=())


# --- statistics on raw samples -----------------------------------------------------------------


def test_min_repeats_for_default_alpha() -> None:
    # 1/C(10,5) = 1/252 = 0.004 >= 0.002, 1/C(12,6) = 1/924 = 0.0011 < 0.002
    assert min_repeats_for(0.002) == 6
    assert min_repeats_for(0.05) == 4  # 1/C(6,3) = 0.05 is not < 0.05; 1/C(8,4) = 0.014


def test_robust_noise_ignores_one_outlier() -> None:
    samples = lognormal(1, 10.0, 0.02, 400)
    assert robust_noise(samples) == pytest.approx(0.02, rel=0.15)
    assert robust_noise([*samples[:-1], 1000.0]) == pytest.approx(robust_noise(samples), rel=0.15)


@pytest.mark.parametrize("seed", range(20))
def test_equal_distributions_with_noise_pass(seed: int) -> None:
    base = lognormal(seed, 10.0, 0.03, 30)
    cur = lognormal(seed + 1000, 10.0, 0.03, 30)
    verdict = compare_samples(base, cur, "median", 0.05)
    assert verdict.status == "pass", verdict.detail


@pytest.mark.parametrize("seed", range(10))
def test_ten_percent_slower_with_low_noise_is_a_regression(seed: int) -> None:
    base = lognormal(seed, 10.0, 0.02, 30)
    cur = lognormal(seed + 1000, 11.0, 0.02, 30)
    verdict = compare_samples(base, cur, "median", 0.05)
    assert verdict.status == "regression", verdict.detail
    assert verdict.p_value is not None and verdict.p_value < 0.002
    assert verdict.change == pytest.approx(0.10, abs=0.02)


@pytest.mark.parametrize("seed", range(10))
def test_ten_percent_slower_with_very_high_noise_is_inconclusive(seed: int) -> None:
    base = lognormal(seed, 10.0, 0.40, 30)
    cur = lognormal(seed + 1000, 11.0, 0.40, 30)
    verdict = compare_samples(base, cur, "median", 0.05)
    assert verdict.status == "inconclusive", verdict.detail
    assert "repeats" in verdict.detail or "too high" in verdict.detail


def test_too_few_samples_is_inconclusive_and_says_how_many() -> None:
    verdict = compare_samples([10.0, 10.1, 9.9], [20.0, 20.1, 19.9], "median", 0.05)
    assert verdict.status == "inconclusive"
    assert "at least 6 repeats" in verdict.detail


def test_faster_with_low_noise_is_improved_and_ungated_is_info() -> None:
    base = lognormal(3, 10.0, 0.02, 30)
    cur = lognormal(4, 9.0, 0.02, 30)
    assert compare_samples(base, cur, "median", 0.05).status == "improved"
    assert compare_samples(base, cur, "median", None).status == "info"


def test_p90_statistic_sees_a_heavier_tail() -> None:
    base = lognormal(5, 10.0, 0.01, 40)
    cur = sorted(lognormal(6, 10.0, 0.01, 40))
    cur[-8:] = [x * 1.5 for x in cur[-8:]]  # the slowest 20% got 50% slower
    assert compare_samples(base, cur, "median", 0.05).status == "pass"
    p90 = compare_samples(base, cur, "p90", 0.05)
    assert p90.change is not None and p90.change > 0.3
    assert p90.status in ("regression", "inconclusive")  # tail-only shifts are weak for a rank test


def test_detectable_slowdown_has_the_stated_power() -> None:
    # At the slowdown the formula calls detectable with power 0.8, a simulation detects ~80%.
    n, noise = 20, 0.03
    shift = detectable_slowdown(noise, n, n, 0.002, 0.8)
    rng = np.random.default_rng(7)
    hits = 0
    trials = 300
    for _ in range(trials):
        base = 10 * (1 + rng.normal(0, noise, n))
        cur = 10 * (1 + shift + rng.normal(0, noise, n))
        hits += compare_samples(list(base), list(cur), "mean", 0.0).status == "regression"
    assert 0.68 <= hits / trials <= 0.92


def test_repeats_to_settle_grows_with_noise() -> None:
    low = repeats_to_settle(0.02, 0.05, 0.002, 0.8)
    high = repeats_to_settle(0.10, 0.05, 0.002, 0.8)
    assert low is not None and high is not None and low < high
    assert detectable_slowdown(0.10, high, high, 0.002, 0.8) <= 0.05
    assert repeats_to_settle(5.0, 0.01, 0.002, 0.8) is None


# --- profiles ---------------------------------------------------------------------------------


def test_same_workload_with_noise_passes() -> None:
    result = compare_profiles(make_profile(seed=1), make_profile(seed=2))
    assert result.verdict == "pass", summary(result)
    assert not result.failures()
    kinds = {m.kind for m in result.metrics}
    assert kinds == {"time", "memory", "exact"}


def test_slower_attention_fails_on_the_step_and_is_attributed_to_the_attention_layer() -> None:
    result = compare_profiles(make_profile(seed=1), make_profile(seed=2, attn_slowdown=1.5))
    assert result.verdict == "regression"
    assert {m.metric for m in result.failures()} == {"step"}  # modules are reported, not gated
    rows = {m.metric: m for m in result.metrics if m.kind == "time"}
    assert rows["layers.blocks.0.attn"].status == "info" and rows["layers.blocks.0.attn"].p_value is not None
    # 1.5 ms more in attention's own time (not q_proj's): the whole of the step's growth.
    [blame] = result.attribution
    assert (blame.layer, blame.phase) == ("blocks.0.attn", "forward")
    assert blame.delta_ms == pytest.approx(1.5, rel=0.1)
    # Its share of the step grew; the rest as it was, the step grew by what the module did.
    assert blame.current_share > blame.baseline_share
    step = next(m for m in result.metrics if m.metric == "step")
    assert blame.step_growth == pytest.approx(step.change, rel=0.2)
    assert result.culprit_layers() == ["blocks.0.attn"]
    assert "accounted for by layers.blocks.0.attn" in summary(result)


def test_opted_in_module_gates_are_holm_corrected() -> None:
    gated = CheckOptions(module_limit=0.05)
    slower = compare_profiles(make_profile(seed=1), make_profile(seed=2, attn_slowdown=1.5), gated)
    failing = {m.metric for m in slower.failures()}
    assert {"step", "layers.blocks.0", "layers.blocks.0.attn"} <= failing and "layers.blocks.0.mlp" not in failing
    assert any("Holm-corrected over" in m.detail for m in slower.failures() if m.layer)
    # A p-value that clears alpha alone but not once multiplied out by the modules compared.
    noisy = compare_profiles(make_profile(seed=1, noise=0.2), make_profile(seed=2, noise=0.2), gated)
    module_rows = [m for m in noisy.metrics if m.kind == "time" and m.layer is not None]
    assert all(m.threshold == 0.05 for m in module_rows) and not noisy.failures()


def test_a_per_layer_threshold_can_loosen_one_layer() -> None:
    opts = options("median:5%", "layers.*attn*:median:80%", "step:median:80%", "layers.blocks.0:median:80%")
    result = compare_profiles(make_profile(seed=1), make_profile(seed=2, attn_slowdown=1.5), opts)
    assert result.verdict == "pass", summary(result)


def _on_a_drifting_machine(profile: Profile, speed: float, seed: int, version: int = 1) -> Profile:
    """`profile` as a machine `speed` times slower would time it, with the reference probe
    (1 ms, 2% noise) timed after each plain step: the same drift slows both."""

    def slower(stats: TimeStats | None) -> TimeStats | None:
        return None if stats is None else TimeStats.from_samples([speed * x for x in stats.samples])

    step = slower(profile.totals.time_ms)
    assert step is not None
    probe = lognormal(seed, speed, 0.02, len(step.samples))
    totals = dataclasses.replace(
        profile.totals, time_ms=step, reference_time_ms=TimeStats.from_samples(probe), reference_version=version
    )
    layers = [dataclasses.replace(layer, time_ms=slower(layer.time_ms)) for layer in profile.layers]
    return dataclasses.replace(profile, totals=totals, layers=layers)


def test_the_reference_probe_divides_out_a_machine_that_got_slower() -> None:
    baseline = _on_a_drifting_machine(make_profile(seed=1), 1.0, seed=1)
    drifted = _on_a_drifting_machine(make_profile(seed=2), 1.08, seed=2)
    unprobed = dataclasses.replace(
        drifted, totals=dataclasses.replace(drifted.totals, reference_time_ms=None, reference_version=None)
    )
    plain = compare_profiles(make_profile(seed=1), unprobed)
    # 8% slower by wall time, in every module alike: significant, but no module's share grew.
    step = next(m for m in plain.metrics if m.metric == "step")
    assert plain.drift_factor is None and step.change == pytest.approx(0.08, abs=0.02)
    assert plain.verdict == "inconclusive" and "no module alone accounts for" in step.detail
    # The step is judged relative to the probe; per-layer times are left as measured, so only
    # the step's verdict is asserted here.
    corrected = compare_profiles(baseline, drifted, options("median:off", "step:median:5%"))
    assert corrected.verdict == "pass", summary(corrected)
    assert corrected.drift_factor == pytest.approx(1.08, rel=0.02)
    assert "relative to the reference probe" in check_markdown(corrected)


def test_a_real_slowdown_survives_the_drift_correction() -> None:
    baseline = _on_a_drifting_machine(make_profile(seed=1), 1.0, seed=1)
    slower = _on_a_drifting_machine(make_profile(seed=2, attn_slowdown=1.5), 1.08, seed=2)
    result = compare_profiles(baseline, slower, options("median:off", "step:median:5%"))
    assert result.verdict == "regression" and [m.metric for m in result.failures()] == ["step"]


def test_probes_of_another_version_are_not_compared() -> None:
    baseline = _on_a_drifting_machine(make_profile(seed=1), 1.0, seed=1, version=1)
    drifted = _on_a_drifting_machine(make_profile(seed=2), 1.08, seed=2, version=2)
    assert compare_profiles(baseline, drifted).drift_factor is None


def test_a_large_drift_is_corrected_but_warned_about() -> None:
    baseline = _on_a_drifting_machine(make_profile(seed=1), 1.0, seed=1)
    drifted = _on_a_drifting_machine(make_profile(seed=2), 2.0, seed=2)
    result = compare_profiles(baseline, drifted, options("median:off", "step:median:5%"))
    assert result.verdict == "pass" and any("reference probe ran 2.0" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("change", "metric"),
    [
        ({"attn_flops": 4 * 2 * 4 * 64 * 64 * 16 * 2}, "attention_flops"),
        ({"num_kv_heads": 4}, "layers.blocks.0.attn.attention"),
        ({"backend": "math"}, "layers.blocks.0.attn.attention"),
        ({"extra_layer": True}, "layers.blocks.2"),
    ],
)
def test_deterministic_changes_always_fail(change: dict[str, object], metric: str) -> None:
    # Same timings (same seed), so only the deterministic change can fail the check.
    result = compare_profiles(make_profile(seed=1), make_profile(seed=1, **change))  # type: ignore[arg-type]
    assert result.verdict == "regression"
    changed = {m.metric for m in result.failures() if m.status == "changed"}
    assert metric in changed
    assert all(m.status == "changed" for m in result.failures())


def test_a_parameter_count_change_fails_even_when_faster() -> None:
    current = make_profile(seed=2, attn_slowdown=0.5)
    current.workload.parameter_count += 1
    result = compare_profiles(make_profile(seed=1), current)
    assert result.verdict == "regression"
    assert [m.metric for m in result.failures()] == ["parameter_count"]


def test_memory_is_exact_by_default_and_a_threshold_tolerates_growth() -> None:
    grown = compare_profiles(make_profile(seed=1), make_profile(seed=1, peak_memory=10_000_001))
    assert [m.metric for m in grown.failures()] == ["peak_memory"]  # one byte more fails by default
    shrunk = compare_profiles(make_profile(seed=1), make_profile(seed=1, peak_memory=9_000_000))
    assert shrunk.verdict == "pass"
    assert next(m for m in shrunk.metrics if m.metric == "peak_memory").status == "improved"
    tolerant = options("median:5%", "memory:2%")
    grown = compare_profiles(make_profile(seed=1), make_profile(seed=1, peak_memory=10_300_000), tolerant)
    assert [m.metric for m in grown.failures()] == ["peak_memory"]  # +3% > 2%
    within = compare_profiles(make_profile(seed=1), make_profile(seed=1, peak_memory=10_100_000), tolerant)
    assert within.verdict == "pass"


def test_high_noise_slowdown_is_inconclusive_not_a_failure() -> None:
    baseline = make_profile(seed=1, noise=0.4)
    result = compare_profiles(baseline, make_profile(seed=2, noise=0.4, attn_slowdown=1.1))
    assert result.verdict == "inconclusive"
    assert not result.failures()


def test_machine_mismatch_fails_unless_allowed() -> None:
    current = make_profile(seed=2, machine=other_machine())
    with pytest.raises(MachineMismatch, match="cpu: Test CPU 3000 vs Other CPU 9000") as raised:
        compare_profiles(make_profile(seed=1), current)
    assert raised.value.exit_code == 4
    result = compare_profiles(make_profile(seed=1), current, CheckOptions(allow_machine_mismatch=True))
    assert result.machine_differences == ["cpu: Test CPU 3000 vs Other CPU 9000"]
    assert any("machines differ" in w for w in result.warnings)
    time_rows = [m for m in result.metrics if m.kind == "time"]
    assert time_rows and all(m.status == "info" for m in time_rows)
    slower_elsewhere = make_profile(seed=2, machine=other_machine(), attn_flops=1)
    allowed = CheckOptions(allow_machine_mismatch=True)
    assert compare_profiles(make_profile(seed=1), slower_elsewhere, allowed).failures()  # exact still gates


def test_different_settings_are_a_usage_error() -> None:
    current = make_profile(seed=2)
    current.settings = Settings(seq_len=256, repeats=30)
    with pytest.raises(UsageError, match="seq_len 128 vs 256"):
        compare_profiles(make_profile(seed=1), current)


def test_dry_run_profiles_compare_exact_metrics_only() -> None:
    result = compare_profiles(make_profile(dry_run=True), make_profile(dry_run=True, num_kv_heads=1))
    assert result.verdict == "regression"
    assert all(m.status == "info" for m in result.metrics if m.kind == "time")


def test_metric_globs_select_what_is_compared() -> None:
    opts = CheckOptions(metrics=("step", "flops"))
    result = compare_profiles(make_profile(seed=1), make_profile(seed=2), opts)
    assert {m.metric for m in result.metrics} == {"step", "flops"}


def test_metric_globs_that_match_nothing_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no metric matches stpe"):
        compare_profiles(make_profile(seed=1), make_profile(seed=2), CheckOptions(metrics=("stpe",)))


def test_check_result_round_trips_through_json() -> None:
    result = compare_profiles(make_profile(seed=1), make_profile(seed=2, attn_slowdown=1.5))
    again = from_json_dict(CheckResult, to_json_dict(result))
    assert dataclasses.asdict(again) == dataclasses.asdict(result)
