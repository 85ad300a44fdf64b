"""Isolated measurements: a hang, a crash or an out-of-memory costs that point only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnprof.profiling.isolate import call_isolated

TARGETS = "tests.isolation_targets"
REPO = Path(__file__).resolve().parents[1]


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


def test_ctrl_c_in_the_parent_kills_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = (
        "import sys; from attnprof.profiling.isolate import call_isolated\n"
        f"call_isolated('{TARGETS}:hang', {{'seconds': 600, 'pid_file': {str(pid_file)!r}}}, timeout_s=600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGINT)
    _, err = parent.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    with pytest.raises(ProcessLookupError):  # killed and reaped by the parent
        os.kill(child, 0)
