"""The terminal table of a profile: one row per module, attention highlighted, bottlenecks flagged."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from attnprof.profiling.records import LayerStats, Profile

SORT_KEYS: dict[str, Callable[[LayerStats], float]] = {
    "order": lambda layer: 0.0,
    "time": lambda layer: -(layer.self_time_ms or 0.0),
    "flops": lambda layer: -float(layer.flops),
    "memory": lambda layer: -float(layer.memory_bytes),
    "name": lambda layer: 0.0,
}
BOTTLENECK_COUNT = 3  # the layers with the most self time get a marker


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_count(value: float) -> str:
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(value) < 1000 or unit == "P":
            return f"{value:.0f}" if unit == "" else f"{value:.2f}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def sorted_layers(profile: Profile, sort: str) -> list[LayerStats]:
    if sort == "name":
        return sorted(profile.layers, key=lambda layer: layer.name)
    return sorted(profile.layers, key=SORT_KEYS[sort])  # stable: execution order breaks ties


def bottlenecks(profile: Profile) -> set[str]:
    timed = [layer for layer in profile.layers if layer.self_time_ms]
    timed.sort(key=lambda layer: -(layer.self_time_ms or 0.0))
    return {layer.name for layer in timed[:BOTTLENECK_COUNT]}


def _relative_name(name: str, shown: set[str]) -> tuple[str, int]:
    """The name below its nearest shown ancestor, and how many shown ancestors it has."""
    parts = name.split(".")
    ancestors = [cut for cut in range(1, len(parts)) if ".".join(parts[:cut]) in shown]
    depth = len(ancestors) + (1 if name and "" in shown else 0)
    return (".".join(parts[ancestors[-1] :]) if ancestors else name), depth


def profile_table(profile: Profile, sort: str = "order") -> Table:
    settings = profile.settings
    title = (
        f"{profile.workload.target} · {settings.mode} · batch {settings.batch_size} · seq {settings.seq_len} · "
        f"{settings.dtype} · {settings.device} · backend {settings.backend}"
    )
    table = Table(
        title=title,
        title_justify="left",
        show_lines=False,
        pad_edge=False,
        caption=device_caption(profile),
        caption_justify="left",
    )
    peak = profile.peak.tflops if profile.peak is not None else None
    roofline = [("% peak", "right"), ("bound", "left")] if peak else []
    for header, justify in [
        ("layer", "left"),
        ("kind", "left"),
        ("fwd ms", "right"),
        ("self ms", "right"),
        ("p10–p90", "right"),
        ("bwd ms", "right"),
        ("FLOPs", "right"),
        ("attn FLOPs", "right"),
        ("memory", "right"),
        ("TFLOP/s", "right"),
        *roofline,
        ("", "left"),
    ]:
        table.add_column(header, justify=justify, no_wrap=True, overflow="ellipsis")
    slow = bottlenecks(profile)
    indent = sort == "order"
    shown = {layer.name for layer in profile.layers}
    for layer in sorted_layers(profile, sort):
        # In execution order the tree is shown by indentation: name relative to the shown parent.
        name, depth = _relative_name(layer.name, shown) if indent else (layer.name, 0)
        label = "  " * depth + f"{name or '(model)'} · {layer.type}"
        spread = f"{layer.time_ms.p10:.2f}–{layer.time_ms.p90:.2f}" if layer.time_ms else "-"
        style = "bold magenta" if layer.kind == "attention" else ""
        table.add_row(
            Text(label, style=style),
            layer.kind,
            _ms(layer.time_ms.median if layer.time_ms else None),
            _ms(layer.self_time_ms),
            spread,
            _ms(layer.backward_time_ms.median if layer.backward_time_ms else None),
            human_count(layer.flops) if layer.flops else "",
            human_count(layer.attention.flops) if layer.attention else "",
            human_bytes(layer.memory_bytes) if layer.memory_bytes else "",
            f"{layer.achieved_tflops:.3f}" if layer.achieved_tflops else "",
            *([_percent(layer.achieved_tflops, peak), layer.bound or ""] if peak else []),
            Text("◀ slowest", style="bold red") if layer.name in slow else "",
        )
    totals = profile.totals
    table.add_section()
    table.add_row(
        Text("total (step)", style="bold"),
        "",
        _ms(totals.time_ms.median if totals.time_ms else None),
        "",
        f"{totals.time_ms.p10:.2f}–{totals.time_ms.p90:.2f}" if totals.time_ms else "-",
        "",
        human_count(totals.flops),
        human_count(totals.attention_flops),
        human_bytes(totals.peak_memory_bytes) + " peak",
        f"{totals.achieved_tflops:.3f}" if totals.achieved_tflops else "",
        *([_percent(totals.achieved_tflops, peak), ""] if peak else []),
        "",
    )
    return table


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
    share = f"{100 * totals.attention_share_flops:.1f}% of FLOPs"
    if totals.attention_share_time is not None:
        share += f", {100 * totals.attention_share_time:.1f}% of step time"
    lines = [
        f"attention: {human_count(totals.attention_flops)} FLOPs (useful) of "
        f"{human_count(totals.attention_flops_dense)} dense; {share}"
    ]
    if totals.backward_flops:
        lines.append(f"backward: {human_count(totals.backward_flops)} FLOPs")
    lines.append(
        f"energy: {totals.energy_j:.3f} J" if totals.energy_j is not None else f"energy: n/a ({totals.energy_reason})"
    )
    lines += [f"note: {note}" for note in profile.notes]
    return Group(profile_table(profile, sort), *(Text(line) for line in lines))


def print_profile(profile: Profile, console: Console, sort: str = "order") -> None:
    console.print(profile_view(profile, sort))
