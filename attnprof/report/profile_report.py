"""Report adapter for a Profile: summary, per-layer tables and the three profile charts."""

from __future__ import annotations

from typing import Any

from attnprof.profiling.records import LayerStats, Profile, TimeStats
from attnprof.report import plots
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section
from attnprof.report.svg import Chart
from attnprof.report.table import profile_view

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


def _median(stats: TimeStats | None) -> float | None:
    return None if stats is None else stats.median


def _layer_row(layer: LayerStats) -> dict[str, Any]:
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
    return [layers, Section("Attention layers", ATTENTION_COLUMNS, attention_rows)]


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
        ("peak memory", f"{t.peak_memory_bytes / 2**20:.4g} MiB"),
        ("energy", energy),
        ("commit", profile.commit or "—"),
        ("created", profile.created),
    ]
    if t.achieved_tflops is not None:
        facts.insert(8, ("achieved", f"{t.achieved_tflops:.4g} TFLOP/s"))
    return facts


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
