"""A Profile in the report: the terminal table (one row per module, attention highlighted,
bottlenecks flagged) and its adapter (summary, per-layer tables, the three profile charts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.text import Text

from attnprof.profiling.records import LayerStats, Profile, TimeStats, Totals, block_kind
from attnprof.report import plots
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section, human_bytes, human_count
from attnprof.report.console_table import Column, FittedTable, Row
from attnprof.report.svg import Chart

SORT_KEYS: dict[str, Callable[[LayerStats], float]] = {
    "order": lambda layer: 0.0,
    "time": lambda layer: -(layer.self_time_ms or 0.0),
    "flops": lambda layer: -float(layer.flops),
    "memory": lambda layer: -float(layer.memory_bytes),
    "name": lambda layer: 0.0,
}
BOTTLENECK_COUNT = 3  # the layers with the most self time get a marker
UNCOUNTED_SHOWN_ABOVE = 0.01  # the terminal names uncounted ops above this share of op time
UNCOUNTED_LISTED = 5  # ... at most this many of them


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def sorted_layers(profile: Profile, sort: str) -> list[LayerStats]:
    if sort == "name":
        return sorted(profile.layers, key=lambda layer: layer.name)
    return sorted(profile.layers, key=SORT_KEYS[sort])  # stable: execution order breaks ties


def bottlenecks(profile: Profile) -> list[str]:
    """The layers with the most self time, most first."""
    timed = [layer for layer in profile.layers if layer.self_time_ms]
    timed.sort(key=lambda layer: -(layer.self_time_ms or 0.0))
    return [layer.name for layer in timed[:BOTTLENECK_COUNT]]


def _relative_name(name: str, shown: set[str]) -> tuple[str, int]:
    """The name below its nearest shown ancestor, and how many shown ancestors it has."""
    parts = name.split(".")
    ancestors = [cut for cut in range(1, len(parts)) if ".".join(parts[:cut]) in shown]
    depth = len(ancestors) + (1 if name and "" in shown else 0)
    return (".".join(parts[ancestors[-1] :]) if ancestors else name), depth


BOTTLENECK_MARK = "◀"
LEGEND = (
    "incl.: a module with everything it calls; self: its own ops, children excluded (forward and "
    "backward timed apart). FLOPs are self; "
    "memory is the activation memory a module adds (incl.), and the step's peak (parameters included) "
    f"on the total row; {BOTTLENECK_MARK}N: the N-th most self time."
)
# The profile table's columns, by priority: what a narrow terminal leaves out first has the highest.
PROFILE_COLUMNS = (
    Column("layer", "left", priority=0, wraps=True),
    Column("module", "left", priority=9),
    Column("block", "left", priority=6),
    Column("incl.\nfwd ms", priority=0),
    Column("self\nfwd ms", priority=0),
    Column("incl.\nbwd ms", priority=2),
    Column("self\nFLOPs", priority=0),
    Column("attn\nFLOPs", priority=3),
    Column("memory", priority=4),
    Column("", "left", priority=5),
    Column("p10–p90\nms", priority=7, detail=True),
    Column("TFLOP/s", priority=8, detail=True),
    Column("% peak", priority=8, detail=True),
    Column("bound", "left", priority=8, detail=True),
)


def profile_table(profile: Profile, sort: str = "order") -> FittedTable:
    settings = profile.settings
    title = (
        f"{profile.workload.target} · {settings.mode} · batch {settings.batch_size} · seq {settings.seq_len} · "
        f"{settings.dtype} · {settings.device} · backend {settings.backend}"
    )
    peak = profile.peak.tflops if profile.peak is not None else None
    slow = bottlenecks(profile)
    indent = sort == "order"
    by_name = {layer.name: layer for layer in profile.layers}
    rows = []
    for layer in sorted_layers(profile, sort):
        # In execution order the tree is shown by indentation: name relative to the shown parent.
        name, depth = _relative_name(layer.name, set(by_name)) if indent else (layer.name, 0)
        spread = f"{layer.time_ms.p10:.2f}–{layer.time_ms.p90:.2f}" if layer.time_ms else "-"
        rank = slow.index(layer.name) + 1 if layer.name in slow else 0
        rows.append(
            Row(
                (
                    Text("  " * depth + (name or "(model)")),
                    layer.type,
                    block_kind(layer.name, by_name),
                    _ms(layer.time_ms.median if layer.time_ms else None),
                    _ms(layer.self_time_ms),
                    _ms(layer.backward_time_ms.median if layer.backward_time_ms else None)
                    if settings.mode == "train" else "",
                    human_count(layer.flops) if layer.flops else "",
                    human_count(layer.attention.flops) if layer.attention else "",
                    human_bytes(layer.memory_bytes) if layer.memory_bytes else "",
                    Text(f"{BOTTLENECK_MARK}{rank}", style="bold red") if rank else "",
                    spread,
                    f"{layer.achieved_tflops:.3f}" if layer.achieved_tflops else "",
                    _percent(layer.achieved_tflops, peak) if peak else "",
                    (layer.bound or "") if peak else "",
                ),
                style="bold magenta" if layer.kind == "attention" else "",
            )
        )
    totals = profile.totals
    rows.append(
        Row(
            (
                Text("total (step)", style="bold"),
                "",
                "",
                _ms(totals.time_ms.median if totals.time_ms else None),
                "",
                "",
                human_count(totals.flops),
                human_count(totals.attention_flops),
                human_bytes(totals.peak_memory_bytes),
                "",
                f"{totals.time_ms.p10:.2f}–{totals.time_ms.p90:.2f}" if totals.time_ms else "-",
                f"{totals.achieved_tflops:.3f}" if totals.achieved_tflops else "",
                _percent(totals.achieved_tflops, peak) if peak else "",
                "",
            ),
            section=True,
        )
    )
    return FittedTable(PROFILE_COLUMNS, rows, title=title, caption=device_caption(profile))


def _percent(achieved: float | None, peak: float) -> str:
    return f"{100 * achieved / peak:.1f}" if achieved else ""


def device_caption(profile: Profile) -> str:
    """Where the figures come from: timing source, the peak compared with, GPU telemetry."""
    parts = [f"timing: {profile.timing_source}"]
    peak = profile.peak
    if peak is not None and peak.tflops:
        bandwidth = f", {peak.memory_gbps:g} GB/s" if peak.memory_gbps else ""
        parts.append(f"peak {peak.math_mode} {peak.tflops:.4g} TFLOP/s{bandwidth} ({peak.source}, {peak.device})")
    elif peak is not None and peak.reason:
        parts.append(f"% of peak: n/a ({peak.reason})")
    telemetry = profile.telemetry
    if telemetry is not None:
        if profile.totals.power_w is not None:
            parts.append(f"power {profile.totals.power_w:.0f} W")
        if telemetry.clocks is not None and telemetry.clocks.sm_mhz is not None:
            parts.append(f"SM clock {telemetry.clocks.sm_mhz:.0f} MHz")
        if telemetry.utilization_pct is not None:
            parts.append(f"GPU util {telemetry.utilization_pct:.0f}%")
    return " · ".join(parts)


def profile_view(profile: Profile, sort: str = "order") -> Group:
    """The table and the totals lines under it."""
    totals = profile.totals
    lines = [
        LEGEND,
        f"attention: {human_count(totals.attention_flops)} FLOPs (useful) of "
        f"{human_count(totals.attention_flops_dense)} dense, {100 * totals.attention_share_flops:.1f}% of FLOPs",
    ]
    share = plots.attention_time(profile)
    if share is not None:
        lines.append(
            f"attention time: {100 * share.inclusive_share:.1f}% of the step incl. (attention modules with their "
            f"projections), {100 * share.self_share:.1f}% self (their own ops)"
        )
    if totals.backward_flops:
        lines.append(f"backward: {human_count(totals.backward_flops)} FLOPs")
    lines.append(
        f"energy: {totals.energy_j:.3f} J" if totals.energy_j is not None else f"energy: n/a ({totals.energy_reason})"
    )
    uncounted = uncounted_line(profile)
    if uncounted is not None:
        lines.append(uncounted)
    if profile.compilation is not None:
        lines.append(f"torch.compile: {compile_fact(profile)}")
    lines += [f"note: {note}" for note in profile.notes]
    return Group(profile_table(profile, sort), *(Text(line) for line in lines))


def uncounted_line(profile: Profile) -> str | None:
    """What the FLOP totals leave out: ops without a formula, when they took over 1% of op time
    (named in a dry run, which times nothing)."""
    totals = profile.totals
    ops = totals.uncounted_ops[:UNCOUNTED_LISTED]
    if not ops:
        return None
    if totals.uncounted_share is None:
        names = ", ".join(f"{op.op} ({op.calls} calls)" for op in ops)
        return f"not counted: ops without a FLOP formula (a dry run times nothing): {names}"
    if totals.uncounted_share <= UNCOUNTED_SHOWN_ABOVE:
        return None
    names = ", ".join(f"{op.op} {100 * (op.share or 0.0):.1f}%" for op in ops)
    more = len(totals.uncounted_ops) - len(ops)
    return (f"not counted: {100 * totals.uncounted_share:.1f}% of op time is in ops without a FLOP formula "
            f"({names}{f', {more} more' if more > 0 else ''}); their FLOPs are missing from the totals")


def print_profile(profile: Profile, console: Console, sort: str = "order") -> None:
    console.print(profile_view(profile, sort))


# The adapter: what `attnprof report` shows of a saved profile, in every format.
LAYER_COLUMNS = (
    "name",
    "type",
    "kind",
    "depth",
    "time_ms",
    "time_p10_ms",
    "time_p90_ms",
    "self_time_ms",
    "backward_time_ms",
    "flops",
    "bytes",
    "memory_bytes",
    "params",
    "achieved_tflops",
    "bound",
    # attention layers only (empty elsewhere): their own FLOPs and layout, the kernel that ran
    "attention_flops",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "attention_backend",
)
ATTENTION_COLUMNS = (
    "name",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "q_len",
    "kv_len",
    "causal",
    "window",
    "backend",
    "flops",
    "flops_dense",
    "backward_flops",
)

UNCOUNTED_COLUMNS = ("op", "calls", "time_ms", "share")


def _median(stats: TimeStats | None) -> float | None:
    return None if stats is None else stats.median


def _layer_row(layer: LayerStats) -> dict[str, Any]:
    attention = layer.attention
    return {
        "name": layer.name or "(model)",
        "type": layer.type,
        "kind": layer.kind,
        "depth": layer.depth,
        "time_ms": _median(layer.time_ms),
        "time_p10_ms": None if layer.time_ms is None else layer.time_ms.p10,
        "time_p90_ms": None if layer.time_ms is None else layer.time_ms.p90,
        "self_time_ms": layer.self_time_ms,
        "backward_time_ms": _median(layer.backward_time_ms),
        "flops": layer.flops,
        "bytes": layer.bytes,
        "memory_bytes": layer.memory_bytes,
        "params": layer.params,
        "achieved_tflops": layer.achieved_tflops,
        "bound": layer.bound,
        "attention_flops": None if attention is None else attention.flops,
        "num_heads": None if attention is None else attention.num_heads,
        "num_kv_heads": None if attention is None else attention.num_kv_heads,
        "head_dim": None if attention is None else attention.head_dim,
        "attention_backend": None if attention is None else attention.backend,
    }


def sections(profile: Profile) -> list[Section]:
    layers = Section(
        "Layers",
        LAYER_COLUMNS,
        [_layer_row(layer) for layer in profile.layers],
        highlight=tuple(layer.attention is not None for layer in profile.layers),
    )
    attention_rows = [
        {"name": layer.name, **{c: getattr(layer.attention, c) for c in ATTENTION_COLUMNS[1:]}}
        for layer in profile.attention_layers()
        if layer.attention is not None
    ]
    uncounted_rows = [
        {"op": op.op, "calls": op.calls, "time_ms": op.time_ms, "share": op.share}
        for op in profile.totals.uncounted_ops
    ]
    shown = [layers, Section("Attention layers", ATTENTION_COLUMNS, attention_rows)]
    if uncounted_rows:  # only when the totals leave something out
        shown.append(Section("Ops without a FLOP formula", UNCOUNTED_COLUMNS, uncounted_rows))
    return shown


def compile_fact(profile: Profile) -> str:
    """Compiles, recompiles and their time, which the step time leaves out."""
    c = profile.compilation
    if c is None:
        return "nothing compiled"
    retimed = f"; {c.retimed_steps} timed step(s) that compiled were timed again" if c.retimed_steps else ""
    return (f"{c.compiles} compile(s) of {c.frames} frame(s), {c.recompiles} recompile(s), "
            f"{c.compile_time_s:.3g} s, not in the step time{retimed}")


def summary(profile: Profile) -> list[tuple[str, str]]:
    s, t, m = profile.settings, profile.totals, profile.machine
    step = (
        f"{t.time_ms.median:.4g} ms median (p10 {t.time_ms.p10:.4g}, p90 {t.time_ms.p90:.4g}, "
        f"{len(t.time_ms.samples)} repeats)"
        if t.time_ms is not None
        else "not timed"
    )
    energy = f"{t.energy_j:.4g} J" if t.energy_j is not None else f"— ({t.energy_reason or 'unknown'})"
    share = f" ({t.attention_flops / t.flops:.1%} of all)" if t.flops else ""
    facts = [
        ("workload", f"{profile.workload.name or profile.workload.target} ({profile.workload.target})"),
        ("fingerprint", profile.workload.fingerprint),
        ("parameters", f"{profile.workload.parameter_count:,}"),
        (
            "settings",
            f"{s.mode}, batch {s.batch_size}, seq {s.seq_len}, {s.dtype}, backend {s.backend}, device {s.device}",
        ),
        ("machine", f"{m.gpu_name or m.cpu}; torch {m.torch}" + (f", CUDA {m.cuda}" if m.cuda else "")),
        ("step time", step),
        ("timing", profile.timing_source),
        ("FLOPs", f"{t.flops:,}"),
        ("attention FLOPs", f"{t.attention_flops:,}{share}"),
        ("not counted", _uncounted_fact(t)),
        ("torch.compile", compile_fact(profile)),
        ("peak memory", f"{t.peak_memory_bytes / 2**20:.4g} MiB"),
        ("energy", energy),
        ("commit", profile.commit or "—"),
        ("created", profile.created),
    ]
    if t.achieved_tflops is not None:
        facts.insert(8, ("achieved", f"{t.achieved_tflops:.4g} TFLOP/s"))
    return facts


def _uncounted_fact(totals: Totals) -> str:
    if not totals.uncounted_ops:
        return "every op has a FLOP formula"
    ops = len(totals.uncounted_ops)
    if totals.uncounted_share is None:
        return f"{ops} op(s) without a FLOP formula (not timed)"
    return f"{totals.uncounted_share:.1%} of op time in {ops} op(s) without a FLOP formula"


def recorded_peaks(profile: Profile) -> plots.Peaks | None:
    """The peaks the profile was compared with when it was taken, if both are known."""
    peak = profile.peak
    if peak is None or not peak.tflops or not peak.memory_gbps:
        return None
    return plots.Peaks(peak.tflops, peak.memory_gbps, f"{peak.source}, {peak.device} {peak.math_mode}")


def charts(profile: Profile, options: ReportOptions) -> list[Chart]:
    peaks = options.peaks or recorded_peaks(profile)
    missing = profile.peak.reason if profile.peak is not None and profile.peak.reason else None
    return [
        plots.time_breakdown_chart(profile),
        plots.roofline_chart(profile, peaks, missing),
        plots.memory_chart(profile),
    ]


ADAPTER: RecordAdapter[Profile] = RecordAdapter(
    kind="profile",
    record_type=Profile,
    recognizes=lambda data: "layers" in data and "totals" in data and "settings" in data,
    title=lambda p: f"attnprof profile: {p.workload.name or p.workload.target}",
    summary=summary,
    sections=sections,
    charts=charts,
    terminal=profile_view,
)
