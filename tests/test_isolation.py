"""Isolated measurements: a hang, a crash or an out-of-memory costs that point only."""

from __future__ import annotations

import pytest

from attnprof.isolate import call_isolated

TARGETS = "tests.isolation_targets"


def test_result_comes_back_as_json() -> None:
    outcome = call_isolated(f"{TARGETS}:square", {"x": 7}, timeout_s=60)
    assert (outcome.status, outcome.value, outcome.reason) == ("ok", {"square": 49}, "")


def test_hang_is_cut_at_the_timeout() -> None:
    outcome = call_isolated(f"{TARGETS}:hang", {"seconds": 600}, timeout_s=1.5)
    assert outcome.status == "timeout" and outcome.reason == "timed out after 1.5 s"


@pytest.mark.parametrize(
    ("function", "reason"),
    [
        ("segfault", "crashed: killed by SIGSEGV"),
        ("abort", "crashed: killed by SIGABRT"),
        ("exit_without_result", "crashed: exited with status 3 before reporting a result"),
    ],
)
def test_crash_is_reported_with_its_signal(function: str, reason: str) -> None:
    outcome = call_isolated(f"{TARGETS}:{function}", {}, timeout_s=60)
    assert outcome.status == "crashed" and outcome.reason.startswith(reason)


@pytest.mark.parametrize(
    ("function", "arguments", "reason"),
    [
        # These two import torch in the child: several seconds on a busy machine.
        pytest.param(
            "allocate_cpu", {"bytes_": 2**50}, "out of memory: [enforce fail", marks=pytest.mark.slow
        ),
        pytest.param(
            "cuda_out_of_memory",
            {},
            "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB",
            marks=pytest.mark.slow,
        ),
        ("python_out_of_memory", {}, "out of memory: MemoryError"),
    ],
)
def test_out_of_memory_is_its_own_status(function: str, arguments: dict, reason: str) -> None:
    outcome = call_isolated(f"{TARGETS}:{function}", arguments, timeout_s=60)
    assert outcome.status == "oom" and outcome.reason.startswith(reason)


def test_other_exceptions_are_errors_in_one_line() -> None:
    outcome = call_isolated(f"{TARGETS}:user_bug", {}, timeout_s=60)
    assert (outcome.status, outcome.reason) == ("error", "ValueError: shapes do not match")


def test_unknown_function_is_an_error() -> None:
    outcome = call_isolated(f"{TARGETS}:nope", {}, timeout_s=60)
    assert outcome.status == "error" and "AttributeError" in outcome.reason
