"""A DistributedProfile (`profile` under torchrun, `…-ranksN.json`): one row per rank (step,
collectives or a pipeline stage's compute, what the rank holds and computes), the slowest rank
and the imbalance, and the blocks' time on every rank. Rank 0 prints the terminal view; `attnprof
report` renders the same sections in every format (csv and parquet: the per-rank table)."""

from __future__ import annotations

from itertools import zip_longest

from rich.console import Group, RenderableType
from rich.text import Text

from attnprof.profiling.records import DistributedProfile, RankInfo
from attnprof.report.adapter import RecordAdapter, Section, human_count, section_table
from attnprof.report.plots import KIND_COLORS
from attnprof.report.svg import BarChart, BarRow, BarSeries

LAYER_DEPTH_SHOWN = 2  # the per-layer table shows the model's blocks and what they hold, not every leaf


def _placement(merged: DistributedProfile) -> RankInfo | None:
    return merged.ranks[0].rank if merged.ranks else None


def _mesh(placement: RankInfo) -> str:
    # zip_longest: a file whose dimension names do not match its shape still renders.
    return " × ".join(
        f"{dim} {size}" if dim else str(size)
        for size, dim in zip_longest(placement.mesh, placement.mesh_dims, fillvalue="")
    )


def _load(merged: DistributedProfile) -> str:
    return "stage compute" if merged.pipelined() else "step"


def headline(merged: DistributedProfile) -> str:
    placement = _placement(merged)
    target = merged.ranks[0].workload.target if merged.ranks else "no ranks"
    backend = f"{placement.backend}, mesh {_mesh(placement)}" if placement is not None else "?"
    plan = placement.plan if placement is not None and placement.plan else "the whole model on every rank"
    return f"{target} · {merged.world_size} ranks ({backend}) · {plan}"


def rank_section(merged: DistributedProfile) -> Section:
    pipelined = merged.pipelined()
    middle = "stage compute ms" if pipelined else "collectives ms"
    columns = ("rank", "slowest", "step ms", middle, "params (local)", "param bytes (local)", "FLOPs (local)")
    slowest = merged.slowest_rank()
    rows = []
    for index, profile in enumerate(merged.ranks):
        totals = profile.totals
        rows.append({
            "rank": index,
            "slowest": index == slowest,
            "step ms": totals.time_ms.median if totals.time_ms else None,
            middle: profile.rank.stage_compute_ms if pipelined and profile.rank else totals.collective_ms,
            "params (local)": next((layer.params for layer in profile.layers if not layer.name), 0),
            "param bytes (local)": totals.param_bytes,
            "FLOPs (local)": totals.flops + totals.backward_flops,
        })
    return Section(
        "per rank (params, bytes and FLOPs: the rank's own share, a sharded parameter by its local shard)",
        columns, rows, highlight=[bool(row["slowest"]) and merged.imbalanced() for row in rows],
    )


def layer_section(merged: DistributedProfile) -> Section:
    shown = [row for row in merged.layers() if row.name and row.name.count(".") < LAYER_DEPTH_SHOWN]
    with_collectives = [r for r in range(merged.world_size) if any(row.collective_ms[r] for row in shown)]
    columns = ["layer", *(f"rank {r} ms" for r in range(merged.world_size)),
               *(f"rank {r} collectives ms" for r in with_collectives)]
    rows = [
        {"layer": row.name,
         **{f"rank {r} ms": row.time_ms[r] for r in range(merged.world_size)},
         **{f"rank {r} collectives ms": row.collective_ms[r] for r in with_collectives}}
        for row in shown
    ]
    return Section("per-layer time per rank, ms (forward + backward; collectives inside it apart)", columns, rows)


def imbalance_fact(merged: DistributedProfile) -> str:
    imbalance, slowest = merged.imbalance(), merged.slowest_rank()
    if imbalance is None or slowest is None:
        return "no step time was measured (dry run)"
    verdict = "imbalanced" if merged.imbalanced() else "balanced"
    return f"slowest rank {slowest}; imbalance (max/mean {_load(merged)}) {imbalance:.2f}: {verdict}"


def notes(merged: DistributedProfile) -> str:
    placement = _placement(merged)
    whole = placement.global_params if placement else (merged.ranks[0].workload.parameter_count if merged.ranks else 0)
    text = f"global params {human_count(whole)}"
    if merged.pipelined():
        text += ("; step: the whole pipeline's, on every rank; stage compute: the rank's own stage over the "
                 "step's micro-batches; transfers between stages are not timed")
    return text


def summary(merged: DistributedProfile) -> list[tuple[str, str]]:
    facts = [("run", headline(merged)), ("balance", imbalance_fact(merged)), ("notes", notes(merged))]
    if merged.ranks:
        s = merged.ranks[0].settings
        facts.append(("settings", f"{s.mode}, batch {s.batch_size}, seq {s.seq_len}, {s.dtype}, device {s.device}"))
    return [*facts, ("created", merged.created)]


def distributed_view(merged: DistributedProfile) -> RenderableType:
    flagged = merged.imbalanced()
    return Group(
        Text(headline(merged), style="bold"),
        section_table(rank_section(merged)),
        Text(notes(merged), style="dim"),
        Text(imbalance_fact(merged), style="bold yellow" if flagged else ""),
        section_table(layer_section(merged)),
    )


def step_chart(merged: DistributedProfile) -> BarChart:
    """Each rank's step split into its own work and the rest: compute and collectives, or for a
    pipeline the stage's compute and its waiting and transfers."""
    pipelined = merged.pipelined()
    names = ("stage compute", "waiting and transfers") if pipelined else ("compute", "collectives")
    rows = []
    for index, profile in enumerate(merged.ranks):
        step = profile.totals.time_ms.median if profile.totals.time_ms else 0.0
        if pipelined:
            own = profile.rank.stage_compute_ms if profile.rank and profile.rank.stage_compute_ms else 0.0
        else:
            own = step - (profile.totals.collective_ms or 0.0)
        own = min(max(own, 0.0), step)  # a damaged file's figures still draw
        rows.append(BarRow(f"rank {index}", (own, step - own)))
    return BarChart(
        title="Step per rank",
        x_label="ms per step",
        series=(BarSeries(names[0], KIND_COLORS["mlp"]), BarSeries(names[1], KIND_COLORS["other"])),
        rows=tuple(rows),
        note=imbalance_fact(merged),
        value_format="{:.3g} ms",
    )


ADAPTER: RecordAdapter[DistributedProfile] = RecordAdapter(
    kind="distributed",
    record_type=DistributedProfile,
    recognizes=lambda data: isinstance(data.get("ranks"), list) and "layers" not in data,
    title=lambda merged: f"attnprof distributed profile: {headline(merged)}",
    summary=summary,
    sections=lambda merged: [rank_section(merged), layer_section(merged)],
    charts=lambda merged, options: [step_chart(merged)],
    terminal=distributed_view,
)
