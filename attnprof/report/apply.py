"""What `attnprof apply` did: attention layers before and after, what took effect, what could
not be applied (by module name), and the verification against the unmodified model."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from attnprof.plans.records import ApplyReport, Plan


def print_apply_report(report: ApplyReport, plan: Plan, console: Console) -> None:
    where = f" (rank {report.rank} of {report.world_size})" if report.world_size > 1 else ""
    console.print(f"plan for {plan.workload.target} [{plan.workload.fingerprint}], objective {plan.objective}{where}")
    if report.sites:
        table = Table(title="attention layers", title_justify="left")
        for column in ("layer", "type", "family", "heads", "kv heads", "head dim", "pruned"):
            table.add_column(column, justify="right" if "head" in column else "left")
        for site in report.sites:
            table.add_row(
                site.name,
                site.type,
                site.family,
                _arrow(site.num_heads, site.new_num_heads),
                _arrow(site.num_kv_heads, site.new_num_kv_heads),
                str(site.head_dim),
                ",".join(map(str, site.pruned_heads)) or "-",
            )
        console.print(table)
    for line in report.applied or ["nothing to change: the plan keeps the model as it is"]:
        console.print(f"applied: {line}", markup=False)
    if report.not_applied:
        table = Table(title="not applied", title_justify="left")
        for column in ("module", "type", "choice", "why"):
            table.add_column(column)
        for item in report.not_applied:
            table.add_row(item.module, item.type, item.what, item.reason)
        console.print(table)
    check = report.verification
    if check is None:
        return
    kl = "-" if check.logit_kl is None else f"{check.logit_kl:.3g}"
    console.print(
        f"verify: max abs error {check.max_abs_error:.3g}, max rel error {check.max_rel_error:.3g}, "
        f"logit KL {kl}, finite {'yes' if check.finite else 'no'}: {'PASS' if check.passed else 'FAIL'}",
        markup=False,
    )
    for reason in check.reasons:
        console.print(f"  {reason}", markup=False)
    if check.measured_latency_ms is not None:
        predicted = "-" if check.predicted_latency_ms is None else f"{check.predicted_latency_ms:.3f} ms"
        console.print(f"latency: measured {check.measured_latency_ms:.3f} ms, predicted {predicted}", markup=False)
    if check.profile_path:
        console.print(f"profile of the applied model: {check.profile_path}", markup=False)


def _arrow(before: int, after: int) -> str:
    return str(before) if before == after else f"{before} → {after}"
