"""The gate's defaults and what backs them: Holm's correction, modules' own time, the attribution
of a step regression, pooled worker profiles, and call_user's reading of every way out."""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest

from attnprof.errors import UsageError, UserCodeError
from attnprof.gate.compare import CheckOptions, _own_samples, attribute, compare_profiles, summary
from attnprof.gate.stats import DEFAULT_THRESHOLDS, holm_adjusted, parse_limit, parse_threshold
from attnprof.profiling.interleave import pooled_profile
from attnprof.profiling.records import Profile, TimeStats
from attnprof.targets.workload import call_user
from tests.samples import layer, lognormal, profile_of

REPEATS = 40


def nested_profile(seed: int, child_extra_ms: float = 0.0, parent_extra_ms: float = 0.0) -> Profile:
    """block (own 1 ms) > attn (own 2 ms) > proj (1 ms), and mlp (3 ms); each parent's samples the
    sum of its own and its children's, repeat by repeat, as the profiler measures them."""
    rng = np.random.default_rng(seed)

    def noisy(ms: float) -> np.ndarray:
        return np.array(lognormal(rng, ms, 0.03, REPEATS))

    proj, attn_own, block_own, mlp = noisy(1.0), noisy(2.0 + child_extra_ms), noisy(1.0 + parent_extra_ms), noisy(3.0)
    attn = proj + attn_own
    block = block_own + attn + mlp

    def stats(values: np.ndarray) -> TimeStats:
        return TimeStats.from_samples([float(v) for v in values])

    layers = [
        layer("block", "other", 1, stats(block)),
        layer("block.attn", "attention", 2, stats(attn)),
        layer("block.attn.proj", "other", 3, stats(proj)),
        layer("block.mlp", "mlp", 2, stats(mlp)),
    ]
    return profile_of(layers, stats(block + noisy(0.2)), 1000)


def scaled(profile: Profile, factor: float) -> Profile:
    """Every timing of PROFILE `factor` times as long: a machine running slower or faster alike."""
    for stats in [profile.totals.time_ms, *(x.time_ms for x in profile.layers)]:
        assert stats is not None
        stats.samples = [factor * v for v in stats.samples]
        stats.median *= factor
    return profile


def test_holm_adjusts_in_step_down_order_and_stays_monotone() -> None:
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm_adjusted([]) == []


def test_own_samples_subtract_the_children_repeat_by_repeat() -> None:
    profile = nested_profile(seed=1)
    own = _own_samples(profile, "forward")
    by_name = {x.name: x.time_ms.samples for x in profile.layers if x.time_ms is not None}
    block, attn, mlp = by_name["block"], by_name["block.attn"], by_name["block.mlp"]
    expected = [b - a - m for b, a, m in zip(block, attn, mlp, strict=True)]
    assert own["block"] == pytest.approx(expected)
    assert own["block.attn.proj"] == pytest.approx(by_name["block.attn.proj"])
    assert _own_samples(profile, "backward") == {}  # no backward timings in this profile


def test_a_slower_module_is_named_by_its_own_time_not_its_parents() -> None:
    result = compare_profiles(nested_profile(seed=1), nested_profile(seed=2, child_extra_ms=1.0))
    assert result.verdict == "regression"
    assert [(a.layer, a.phase) for a in result.attribution] == [("block.attn", "forward")]
    assert result.attribution[0].delta_ms == pytest.approx(1.0, rel=0.15)
    assert result.attribution[0].p_value < 0.002
    assert "accounted for by layers.block.attn (own time +" in summary(result)
    # The parent's own code slowing down is the parent's, not its children's.
    parent = compare_profiles(nested_profile(seed=1), nested_profile(seed=2, parent_extra_ms=1.0))
    assert [a.layer for a in parent.attribution] == ["block"]


def test_unchanged_code_has_no_attribution_even_when_asked() -> None:
    baseline, current = nested_profile(seed=1), nested_profile(seed=2)
    assert attribute(baseline, current, limit=0.0, alpha=0.002) == []
    assert compare_profiles(baseline, current).verdict == "pass"


def test_a_machine_that_runs_slower_everywhere_is_not_a_regression() -> None:
    """Every module 10% slower alike: the step's growth is significant, but no module's share
    of the step moved, which is what a slower machine does and a change in one module does not."""
    slower = scaled(nested_profile(seed=2), 1.10)
    result = compare_profiles(nested_profile(seed=1), slower)
    step = next(m for m in result.metrics if m.metric == "step")
    assert step.change == pytest.approx(0.10, abs=0.03) and step.p_value is not None and step.p_value < 1e-6
    assert result.verdict == "inconclusive" and result.attribution == []
    assert "no module alone accounts for" in step.detail


def test_a_slower_module_is_caught_while_the_machine_runs_faster_everywhere() -> None:
    """attn's own time 1 ms longer while every timing is 20% shorter (a quieter machine than at
    the baseline): the step is faster, yet attn's growth beyond what every module shares is the
    change, and it alone makes the step slower by more than the limit."""
    current = scaled(nested_profile(seed=2, child_extra_ms=1.0), 0.8)
    result = compare_profiles(nested_profile(seed=1), current)
    step = next(m for m in result.metrics if m.metric == "step")
    assert step.change is not None and step.change < 0
    assert result.verdict == "regression" and step.status == "regression"
    assert [a.layer for a in result.attribution] == ["block.attn"]
    # 1 ms more of a 7.2 ms step, whatever the machine did.
    assert result.attribution[0].step_growth == pytest.approx(1.0 / 7.2, rel=0.2)


def test_a_faster_module_does_not_make_the_others_regress() -> None:
    """attn's own time halved: every other module's share of the step grows, but none of them
    grew beyond what the modules share in common."""
    result = compare_profiles(nested_profile(seed=1), nested_profile(seed=2, child_extra_ms=-1.0))
    assert result.attribution == [] and result.verdict != "regression"


def test_the_defaults_gate_the_step_and_report_the_modules() -> None:
    assert DEFAULT_THRESHOLDS == ("step:median:3%", "memory:0%")
    options = CheckOptions()
    assert options.limits("step", "time") == {"median": 0.03}
    assert options.limits("layers.block.attn", "time") == {"median": None}  # reported
    assert options.limits("layers.block.attn.memory", "memory") == {"memory": 0.0}


def test_module_limit_sits_between_limits_over_everything_and_globs() -> None:
    thresholds = tuple(parse_threshold(t) for t in ("median:off", "layers.*mlp*:median:20%", "memory:0%"))
    options = CheckOptions(thresholds=thresholds, module_limit=0.1)
    assert options.limits("layers.block.attn", "time") == {"median": 0.1}
    assert options.limits("layers.block.mlp", "time") == {"median": 0.2}
    assert options.limits("step", "time") == {"median": None}
    assert parse_limit("10%", "--module-limit") == pytest.approx(0.1)
    for bad in ("10", "ten%", "-1%", "nan%"):
        with pytest.raises(UsageError, match="--module-limit"):
            parse_limit(bad, "--module-limit")


def test_pooled_profiles_keep_each_step_beside_its_probe() -> None:
    one, two = nested_profile(seed=1), nested_profile(seed=2)
    for profile, scale in ((one, 1.0), (two, 2.0)):
        assert profile.totals.time_ms is not None
        probe = [scale * 0.5] * len(profile.totals.time_ms.samples)
        profile.totals.reference_time_ms = TimeStats.from_samples(probe)
    pooled = pooled_profile([one, two])
    assert pooled.totals.time_ms is not None and pooled.totals.reference_time_ms is not None
    steps, probes = pooled.totals.time_ms.samples, pooled.totals.reference_time_ms.samples
    assert len(steps) == len(probes) == 2 * REPEATS
    assert probes[:REPEATS] == [0.5] * REPEATS and probes[REPEATS:] == [1.0] * REPEATS
    assert steps[REPEATS:] == two.totals.time_ms.samples
    assert pooled.settings.repeats == one.settings.repeats + two.settings.repeats
    attn = next(x for x in pooled.layers if x.name == "block.attn")
    assert attn.time_ms is not None and len(attn.time_ms.samples) == 2 * REPEATS
    assert pooled.totals.flops == one.totals.flops


def test_call_user_turns_every_way_out_into_a_user_error() -> None:
    def leave(how: BaseException) -> None:
        raise how

    for how, said in [
        (SystemExit(0), "called sys.exit(0)"),
        (SystemExit(None), "called sys.exit(None)"),
        (GeneratorExit(), "raised GeneratorExit"),
        (KeyboardInterrupt(), "raised KeyboardInterrupt itself"),
        (ValueError("bad"), "raised ValueError: bad"),
    ]:
        with pytest.raises(UserCodeError, match=re.escape(said)):
            call_user(leave, how, what="forward")


def test_a_real_sigint_inside_user_code_is_still_an_interruption() -> None:
    def interrupted() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # delivered to this (main) thread before the call returns
        for _ in range(1000):
            pass

    call_user(int, what="warm-up")  # the SIGINT handler is watched from the first call on
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        pytest.skip("the SIGINT handler could not be watched here")
    with pytest.raises(KeyboardInterrupt) as caught:
        call_user(interrupted, what="forward")
    assert not isinstance(caught.value, UserCodeError)
