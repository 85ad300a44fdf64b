"""A DistributedProfile on the terminal: one summary per rank (step, collectives, what the rank
holds and computes), the slowest rank and the imbalance, and the blocks' time on every rank."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from attnprof.profiling.records import DistributedProfile
from attnprof.report.adapter import human_bytes, human_count

LAYER_DEPTH_SHOWN = 2  # the per-layer table shows the model's blocks and what they hold, not every leaf


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def rank_table(merged: DistributedProfile) -> Table:
    first = merged.ranks[0]
    placement = first.rank
    mesh = "" if placement is None else " × ".join(
        f"{dim} {size}" if dim else str(size)
        for size, dim in zip(placement.mesh, placement.mesh_dims or [""] * len(placement.mesh), strict=True)
    )
    plan = placement.plan if placement is not None and placement.plan else "the whole model on every rank"
    backend = placement.backend if placement is not None else "?"
    pipelined = merged.pipelined()
    caption = ("params and FLOPs: this rank's share (a sharded parameter by its local shard); "
               f"global params {human_count(placement.global_params if placement else first.workload.parameter_count)}")
    if pipelined:
        caption += ("; step: the whole pipeline's, on every rank; stage compute: the rank's own stage over the "
                    "step's micro-batches; transfers between stages are not timed")
    table = Table(
        title=f"{first.workload.target} · {merged.world_size} ranks ({backend}, mesh {mesh}) · {plan}", caption=caption
    )
    columns = ["rank", "step ms", "stage compute ms" if pipelined else "collectives ms",
               "params (local)", "param bytes (local)", "FLOPs (local)"]
    for column in columns:
        table.add_column(column, justify="left" if column == "rank" else "right")
    slowest = merged.slowest_rank()
    for index, profile in enumerate(merged.ranks):
        totals = profile.totals
        flops = totals.flops + totals.backward_flops
        marker = " slowest" if index == slowest and merged.world_size > 1 else ""
        table.add_row(
            f"{index}{marker}",
            _ms(totals.time_ms.median if totals.time_ms else None),
            _ms(profile.rank.stage_compute_ms if pipelined and profile.rank else totals.collective_ms),
            human_count(next((layer.params for layer in profile.layers if not layer.name), 0)),
            human_bytes(totals.param_bytes),
            human_count(flops),
        )
    return table


def layer_table(merged: DistributedProfile) -> Table:
    ranks = range(merged.world_size)
    table = Table(title="per-layer time per rank, ms (forward + backward; collectives in brackets)")
    table.add_column("layer")
    for rank in ranks:
        table.add_column(f"rank {rank}", justify="right")
    for row in merged.layers():
        if row.name.count(".") >= LAYER_DEPTH_SHOWN or not row.name:
            continue
        cells = []
        for time_ms, collective in zip(row.time_ms, row.collective_ms, strict=True):
            cell = _ms(time_ms)
            if collective:
                cell += f" ({collective:.3f})"
            cells.append(cell)
        table.add_row(row.name, *cells)
    return table


def imbalance_line(merged: DistributedProfile) -> Text:
    imbalance = merged.imbalance()
    slowest = merged.slowest_rank()
    if imbalance is None or slowest is None:
        return Text("no step time was measured (dry run)")
    flagged = merged.imbalanced()
    verdict = "imbalanced" if flagged else "balanced"
    load = "stage compute" if merged.pipelined() else "step"
    return Text(
        f"slowest rank {slowest}; imbalance (max/mean {load}) {imbalance:.2f}: {verdict}",
        style="bold yellow" if flagged else "",
    )


def print_distributed_profile(merged: DistributedProfile, console: Console) -> None:
    console.print(Group(rank_table(merged), imbalance_line(merged), layer_table(merged)))
