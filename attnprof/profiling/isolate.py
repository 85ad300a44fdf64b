"""Run one measurement in a child process, so that a hang or a crash costs only that point.

`call_isolated("pkg.module:function", {...}, timeout_s)` starts `python -m attnprof.profiling.isolate`,
which imports the function, calls it with the JSON arguments and writes its JSON-able result
to a file. The parent waits at most `timeout_s`; a child still running then is killed with its
whole process group. Requests and results are JSON files: nothing crosses as a pickle.

A child never outlives its parent: on Linux it asks the kernel for SIGKILL when the parent
dies (PR_SET_PDEATHSIG), so a parent killed by the OOM killer or a CI cancel leaves no
measurement running. The request folder such a parent leaves is removed by the next one
(store.ScratchFolder).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from attnprof.errors import AttnprofError
from attnprof.store import ScratchFolder, atomic_write_text, to_json_dict

Status = Literal["ok", "oom", "error", "crashed", "timeout"]


@dataclass
class IsolatedOutcome:
    status: Status
    value: Any = None  # the function's result as JSON data, when status is "ok"
    reason: str = ""  # one line, when it is not
    exit_code: int | None = None  # an AttnprofError's exit code, when the child raised one
    user_traceback: str = ""  # the user's frames, when the child's error was in their code


@dataclass
class IsolatedCall:
    """A child process started by `start_isolated`, not yet waited for."""

    child: subprocess.Popen[bytes]
    folder: ScratchFolder  # request, result and log; removed once waited for
    result: Path
    log: Path


def start_isolated(function: str, arguments: dict[str, Any], pass_fds: tuple[int, ...] = ()) -> IsolatedCall:
    """Start calling `function` ("module:name") with keyword `arguments` in a fresh Python
    process; `pass_fds` are file descriptors the child inherits (pipes to talk to it)."""
    folder = ScratchFolder("isolate")
    request = folder.path / "request.json"
    request.write_text(json.dumps({"function": function, "arguments": arguments}, allow_nan=False))
    result, log = folder.path / "result.json", folder.path / "log.txt"
    with log.open("wb") as log_handle:
        child = subprocess.Popen(
            [sys.executable, "-m", "attnprof.profiling.isolate", str(request), str(result), str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=log_handle,  # the child's prints never reach our stdout (--json stays clean)
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            start_new_session=True,  # its own process group: killed whole, spared the terminal's ^C
            pass_fds=pass_fds,
        )
    return IsolatedCall(child, folder, result, log)


def wait_isolated(call: IsolatedCall, timeout_s: float) -> IsolatedOutcome:
    """Wait at most `timeout_s` for a started call; kill what is left of it and read its outcome."""
    try:
        try:
            returncode = call.child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return IsolatedOutcome("timeout", reason=f"timed out after {timeout_s:g} s")
        finally:
            _kill_group(call.child)
        if call.result.exists():
            data = json.loads(call.result.read_text(encoding="utf-8"))
            return IsolatedOutcome(
                data["status"], data.get("value"), data.get("reason", ""), data.get("exit_code"),
                data.get("user_traceback", ""),
            )
        return IsolatedOutcome("crashed", reason=_crash_reason(returncode, call.log))
    finally:
        call.folder.cleanup()


def call_isolated(function: str, arguments: dict[str, Any], timeout_s: float) -> IsolatedOutcome:
    """Call `function` ("module:name") with keyword `arguments` in a fresh Python process."""
    return wait_isolated(start_isolated(function, arguments), timeout_s)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """Kill the child and anything it started; reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _crash_reason(returncode: int, log: Path) -> str:
    if returncode < 0:
        try:
            how = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"killed by signal {-returncode}"
    else:  # the child's own code never exits early: something it ran did (os._exit, a C abort)
        how = f"exited with status {returncode} before reporting a result"
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    return f"crashed: {how}" + (f" ({last[:200]})" if last else "")


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Be killed (SIGKILL) when the parent dies; exit now if it already has.

    The kernel sends the signal when the thread that started this process ends; attnprof
    starts children from its main thread, which ends only with the process.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(1)


def _child(request_path: Path, result_path: Path) -> None:
    """The child's side: call the function, write {"status", "value" | "reason"} atomically."""
    from attnprof.profiling.faults import out_of_memory, out_of_memory_reason

    request = json.loads(request_path.read_text(encoding="utf-8"))
    module_name, _, name = request["function"].partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
        outcome: dict[str, Any] = {"status": "ok", "value": to_json_dict(function(**request["arguments"]))}
    except BaseException as exc:  # SystemExit and the like too: the parent must hear how it ended
        if isinstance(exc, Exception) and out_of_memory(exc) is not None:
            outcome = {"status": "oom", "reason": out_of_memory_reason(exc)}
        elif isinstance(exc, AttnprofError):
            outcome = {
                "status": "error", "reason": str(exc), "exit_code": exc.exit_code,
                "user_traceback": getattr(exc, "user_traceback", ""),
            }
        else:
            traceback.print_exc()  # into the log, for whoever investigates
            outcome = {"status": "error", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    atomic_write_text(result_path, json.dumps(outcome, allow_nan=False))


if __name__ == "__main__":
    die_with_parent(int(sys.argv[3]))
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
