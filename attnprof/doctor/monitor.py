"""`attnprof monitor`: sample every NVIDIA GPU at a fixed interval, optionally while watching a
process (an existing PID or a command launched here), and record the samples for later reports.

The rendering lives in attnprof/report/monitor.py; this module only samples and decides when to
stop, calling `on_tick` with each round of samples.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnprof.doctor.records import MIN_INTERVAL_S, MonitorRecording
from attnprof.errors import EnvironmentUnsupported, NvmlError, Terminated, UsageError
from attnprof.measure import nvml
from attnprof.measure.records import GpuInfo, GpuSample
from attnprof.store import timestamp, write_record

FLUSH_EVERY_S = 5.0  # a recording survives a kill with at most this much lost
TERMINATE_GRACE_S = 10.0  # a launched command's time to stop after SIGTERM, before SIGKILL

TickCallback = Callable[[list[GpuInfo], list[GpuSample], str], None]


@dataclass
class MonitorOptions:
    interval_s: float = 1.0
    duration_s: float | None = None  # None: until the process ends or Ctrl-C
    pid: int | None = None
    command: Sequence[str] = ()
    record: Path | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_s) and self.interval_s >= MIN_INTERVAL_S):
            raise UsageError(f"--interval must be a number of seconds from {MIN_INTERVAL_S}, got {self.interval_s:g}")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise UsageError(f"--duration must be a positive number of seconds, got {self.duration_s:g}")
        if self.pid is not None and self.command:
            raise UsageError("give either --pid or a command after --, not both")
        if self.pid is not None and not _alive(self.pid):
            raise UsageError(f"--pid {self.pid}: no such process")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


@dataclass
class _Watch:
    """The watched process: launched here (`process`) or found by PID."""

    pid: int | None = None
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    argv: list[str] = field(default_factory=list)

    def finished(self) -> bool:
        if self.process is not None:
            self.exit_code = self.process.poll()
            return self.exit_code is not None
        return self.pid is not None and not _alive(self.pid)

    def status(self) -> str:
        if self.pid is None:
            return "all GPUs"
        what = " ".join(self.argv) if self.argv else f"PID {self.pid}"
        return f"{what} (exited {self.exit_code})" if self.exit_code is not None else f"{what} (running)"


def run_monitor(options: MonitorOptions, on_tick: TickCallback) -> int:
    """Sample until the duration ends, the watched process exits, or Ctrl-C (SIGTERM is passed
    on to a launched command, and raised again once it stopped: exit 143). Returns the exit
    code for the CLI: the launched command's own, else 0."""
    try:
        with nvml.session():
            gpus = nvml.list_gpus()
            if not gpus:
                raise EnvironmentUnsupported("attnprof monitor needs an NVIDIA GPU; NVML found none")
            readers = [nvml.DeviceReader(info, handle) for info, handle in gpus]
            return _loop(options, readers, on_tick)
    except NvmlError as exc:
        raise EnvironmentUnsupported(f"attnprof monitor needs an NVIDIA GPU: {exc}") from None


def _launch(command: Sequence[str]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(list(command))
    except OSError as exc:  # not found, not executable
        raise UsageError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None


def _loop(options: MonitorOptions, readers: list[nvml.DeviceReader], on_tick: TickCallback) -> int:
    infos = [reader.info for reader in readers]
    watch = _Watch(pid=options.pid, argv=list(options.command))
    if options.command:
        watch.process = _launch(options.command)
        watch.pid = watch.process.pid
    recording = MonitorRecording(
        created=timestamp(),
        interval_s=options.interval_s,
        gpus=infos,
        samples=[],
        command=list(options.command),
        pid=watch.pid,
    )
    origin = last_flush = time.perf_counter()
    try:
        while True:
            now = time.perf_counter() - origin
            tick = [reader.read(now) for reader in readers]
            if watch.pid is not None:
                for reader, sample in zip(readers, tick, strict=True):
                    sample.process_memory_bytes = reader.process_memory(watch.pid)
            recording.samples.extend(tick)
            done = watch.finished() or (options.duration_s is not None and now >= options.duration_s)
            on_tick(infos, tick, watch.status())
            if options.record is not None and time.perf_counter() - last_flush >= FLUSH_EVERY_S:
                write_record(options.record, recording)
                last_flush = time.perf_counter()
            if done:
                break
            _wait(watch, options.interval_s)
    except Terminated:
        # SIGTERM (a CI cancel, a scheduler) stops the launched command too, then attnprof exits 143.
        if watch.process is not None and watch.process.poll() is None:
            watch.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watch.process.wait(timeout=TERMINATE_GRACE_S)
            if watch.process.poll() is None:
                watch.process.kill()
        raise
    except KeyboardInterrupt:
        pass  # Ctrl-C ends monitoring; the terminal sent it to a launched command as well
    finally:
        if watch.process is not None:
            watch.exit_code = watch.process.wait()
        recording.exit_code = watch.exit_code
        if options.record is not None:
            write_record(options.record, recording)
    if watch.process is None or watch.exit_code is None:
        return 0
    return 128 - watch.exit_code if watch.exit_code < 0 else watch.exit_code  # killed by a signal


def _wait(watch: _Watch, seconds: float) -> None:
    """Sleep one interval, waking early when a launched command exits."""
    if watch.process is None:
        time.sleep(seconds)
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        watch.process.wait(timeout=seconds)
