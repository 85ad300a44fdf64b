"""Kernel-level trace (`attnprof profile --trace`): a short torch.profiler window.

Every op (and, on a GPU, every kernel it launched) is attributed to the innermost module whose
`record_function` label `attnprof::<module path>` encloses it; the module scopes push those
labels. The SDPA backend that actually ran is read from kernel names (flash / efficient / cudnn)
or, without kernels, from the ATen op names. The Chrome trace is saved as .pt.trace.json.gz
(Perfetto, chrome://tracing, TensorBoard's profiler plugin and Holistic Trace Analysis open it).

When the GPU window records no kernel (CUPTI missing, not permitted, or held by another
profiler) the summary says so and per-layer times stay on CUDA events: a trace never turns into
0 ms layers.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from attnprof import backends
from attnprof.errors import UsageError
from attnprof.measure.records import ModuleTrace, TraceSummary
from attnprof.measure.scopes import LABEL_PREFIX
from attnprof.store import ScratchFolder, atomic_write_bytes

OUTSIDE = "(outside modules)"  # ops not under any module label, e.g. the loss or optimizer step
TOP_NAMES = 3
# The name TensorBoard's profiler plugin lists (it finds no other); Perfetto opens any.
TRACE_SUFFIX = ".pt.trace.json.gz"

NO_KERNELS_NOTE = (
    "the GPU trace recorded no kernels (CUPTI unavailable, not permitted, or in use by another "
    "profiler); per-layer times come from CUDA events"
)


@dataclass
class _ModuleTally:
    """Time (µs over the whole window) and names seen inside one module, children excluded."""

    time_us: float = 0.0
    count: int = 0
    by_name: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    backend_us: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def _module_of(event: Any, cache: dict[int, str]) -> str:
    """The module path of the innermost `attnprof::` label enclosing the event (itself included)."""
    chain = []
    node = event
    found = OUTSIDE
    while node is not None:
        key = id(node)
        if key in cache:
            found = cache[key]
            break
        chain.append(key)
        if node.name.startswith(LABEL_PREFIX):
            found = node.name[len(LABEL_PREFIX) :]
            break
        node = node.cpu_parent
    for key in chain:
        cache[key] = found
    return found


def summarize(
    events: Iterable[Any],
    active_steps: int,
    device: torch.device,
    attention_modules: Iterable[str] = (),
    trace_file: str | None = None,
) -> TraceSummary:
    """Per-module time and SDPA backends from profiler events (torch FunctionEvents).

    On a GPU with kernels: device time of the kernels each module launched (timing_source
    "cupti"). Otherwise: the modules' CPU op self times ("cpu_ops"); on a GPU without kernels the
    module view is left empty, since host time would misstate device time.
    """
    cpu_events = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    kernel_count = sum(len(e.kernels) for e in cpu_events)
    use_kernels = device.type == "cuda" and kernel_count > 0
    notes: list[str] = []
    cache: dict[int, str] = {}
    tallies: dict[str, _ModuleTally] = defaultdict(_ModuleTally)
    op_backends: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in cpu_events:
        module = _module_of(event, cache)
        tally = tallies[module]
        op_backend = backends.backend_of_kernel(event.name)
        if op_backend is not None:
            op_backends[module][op_backend] += max(event.self_cpu_time_total, 1e-3)
        if use_kernels:
            for kernel in event.kernels:
                tally.time_us += kernel.duration
                tally.count += 1
                tally.by_name[kernel.name] += kernel.duration
                kernel_backend = backends.backend_of_kernel(kernel.name)
                if kernel_backend is not None:
                    tally.backend_us[kernel_backend] += kernel.duration
        else:
            # A label's own self time is the module's Python code between its ops.
            tally.time_us += event.self_cpu_time_total
            if not event.name.startswith(LABEL_PREFIX):
                tally.count += 1
                tally.by_name[event.name] += event.self_cpu_time_total

    if device.type == "cuda" and not use_kernels:
        timing_source = "cuda_events"
        notes.append(NO_KERNELS_NOTE)
        modules: list[ModuleTrace] = []
    else:
        timing_source = "cupti" if use_kernels else "cpu_ops"
        modules = _module_rows(tallies, active_steps)

    # Modules that called attention themselves, then the attention layers the caller knows of
    # (whose attention may run in a child module).
    found_backends = {}
    for name in [*sorted(set(op_backends) | {m for m, t in tallies.items() if t.backend_us}), *attention_modules]:
        found = _backend_within(name, tallies, op_backends)
        if found is not None and name != OUTSIDE:
            found_backends[name] = found
    return TraceSummary(
        timing_source=timing_source,
        active_steps=active_steps,
        events=len(cpu_events),
        kernels=kernel_count,
        trace_file=trace_file,
        backends=found_backends,
        modules=modules,
        notes=notes,
    )


def _inside(module: str, ancestor: str) -> bool:
    if module == OUTSIDE:
        return ancestor == OUTSIDE
    return ancestor == "" or module == ancestor or module.startswith(ancestor + ".")


def _module_rows(tallies: dict[str, _ModuleTally], steps: int) -> list[ModuleTrace]:
    rows = []
    for name in sorted(tallies):
        own = tallies[name]
        inclusive = sum(t.time_us for m, t in tallies.items() if _inside(m, name))
        top = sorted(own.by_name.items(), key=lambda item: -item[1])[:TOP_NAMES]
        rows.append(
            ModuleTrace(
                name=name,
                time_ms=inclusive / 1000.0 / steps,
                self_time_ms=own.time_us / 1000.0 / steps,
                kernels=round(own.count / steps),
                top=[n for n, _ in top],
            )
        )
    return rows


def _backend_within(
    module: str, tallies: dict[str, _ModuleTally], op_backends: dict[str, dict[str, float]]
) -> str | None:
    """The backend with the most time inside the module: kernel names first, op names otherwise."""
    for source in ({m: t.backend_us for m, t in tallies.items()}, op_backends):
        totals: dict[str, float] = defaultdict(float)
        for name, per_backend in source.items():
            if _inside(name, module):
                for backend, us in per_backend.items():
                    totals[backend] += us
        if totals:
            return max(totals.items(), key=lambda item: item[1])[0]
    return None


def run_trace(
    step: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 1,
    active: int = 3,
    attention_modules: Iterable[str] = (),
    trace_file: Path | None = None,
) -> TraceSummary:
    """Run `warmup + active` steps under torch.profiler and summarise the active ones.

    The caller keeps the module labels on (module scopes with record_function) during the call.
    """
    if warmup < 1 or active < 1:
        raise UsageError(f"a trace needs at least 1 warm-up and 1 active step, got {warmup} and {active}")
    if trace_file is not None and not Path(trace_file).name.endswith(".json.gz"):
        raise UsageError(f"the trace file must end in .json.gz, got {Path(trace_file).name!r}")
    activities = [ProfilerActivity.CPU]
    notes: list[str] = []
    if device.type == "cuda":
        if ProfilerActivity.CUDA in torch.profiler.supported_activities():
            activities.append(ProfilerActivity.CUDA)
        else:
            notes.append("this torch build cannot trace CUDA kernels (no CUPTI)")
    collected: dict[str, Any] = {}

    def ready(prof: profile) -> None:
        collected["events"] = prof.events()
        if trace_file is not None:
            export_chrome_trace(prof, trace_file)

    with warnings.catch_warnings():
        # torch warns when CUPTI cannot be initialised; the zero-kernel note below says it once.
        warnings.simplefilter("ignore")
        with profile(
            activities=activities,
            schedule=schedule(wait=0, warmup=warmup, active=active, repeat=1),
            on_trace_ready=ready,
        ) as prof:
            for _ in range(warmup + active):
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                prof.step()
    summary = summarize(
        collected.get("events", []),
        active,
        device,
        attention_modules,
        str(trace_file) if trace_file is not None else None,
    )
    summary.notes = notes + summary.notes
    return summary


def export_chrome_trace(prof: profile, path: Path) -> None:
    """Write the window as gzipped Chrome-trace JSON, atomically (temp file + rename), with the
    `distributedInfo` Holistic Trace Analysis reads (torch writes it only in a process group)."""
    with ScratchFolder("trace") as scratch:  # a folder a killed run leaves is removed by the next
        raw = scratch / "trace.json"
        prof.export_chrome_trace(str(raw))
        trace = json.loads(raw.read_text(encoding="utf-8"))
        trace.setdefault("distributedInfo", distributed_info())
        atomic_write_bytes(Path(path), gzip.compress(json.dumps(trace).encode()))


def distributed_info() -> dict[str, Any]:
    """This process's rank, world size and backend; rank 0 of 1 (backend "none") outside a group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return {"backend": str(dist.get_backend()), "rank": dist.get_rank(), "world_size": dist.get_world_size()}
    return {"backend": "none", "rank": 0, "world_size": 1}


def move_next_to(trace_file: Path, profile_file: Path) -> Path:
    """Move a saved trace beside its profile: <profile stem>.pt.trace.json.gz, written atomically
    (the scratch folder may be on another file system, where a move is a copy)."""
    target = Path(profile_file).with_name(Path(profile_file).stem + TRACE_SUFFIX)
    atomic_write_bytes(target, Path(trace_file).read_bytes())
    Path(trace_file).unlink()
    return target
