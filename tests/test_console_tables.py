"""Terminal tables at 80 columns and piped: every key number whole, the columns left out named.

Rendered by the real CLI (CliRunner; COLUMNS is the width asked for when output is not a
terminal) and by rich consoles of a given width, on real profiles, a real tune and a real check.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.costmodel.fit import cost_kind
from attnprof.profiling.records import LayerStats, Profile, block_kind
from attnprof.report import console
from attnprof.report.adapter import human_bytes, human_count
from attnprof.report.check import check_text, shown_metrics, shown_values
from attnprof.report.console_table import Column, FittedTable, Row
from attnprof.report.plan import format_metric, print_tune
from attnprof.report.profile import _ms
from attnprof.settings import resolve_settings
from attnprof.store import read_record
from attnprof.targets.load import load_workload
from attnprof.tuning.budget import parse_budget
from attnprof.tuning.loop import TuneRequest, tune
from tests.samples import sample_check

FAST = ["--batch-size", "2", "--seq-len", "16", "--repeats", "2", "--warmup", "1", "--threads", "1"]


def rendered(draw: object, width: int) -> str:
    out = Console(file=io.StringIO(), width=width, no_color=True, highlight=False)
    draw(out)  # type: ignore[operator]
    return out.file.getvalue()  # type: ignore[attr-defined]


def key_numbers(layer: LayerStats) -> list[str]:
    """A profile row's key figures as the table writes them: incl. ms, self ms, self FLOPs."""
    numbers = [_ms(layer.time_ms.median if layer.time_ms else None), _ms(layer.self_time_ms)]
    return numbers + ([human_count(layer.flops)] if layer.flops else [])


def assert_rows_whole(text: str, profile: Profile) -> None:
    """Each layer's key numbers stand side by side on a line of their own, uncut."""
    assert "…" not in text
    for layer in profile.layers:
        pattern = r"\s+".join(re.escape(n) for n in key_numbers(layer))
        assert re.search(rf"(^|\s){pattern}(\s|$)", text, re.M), (layer.name, key_numbers(layer))


@pytest.fixture
def piped(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("COLUMNS")  # output to a pipe with no width asked for
    return runner


def test_piped_transformers_profile_cuts_no_number(piped: CliRunner, tmp_path: Path) -> None:
    result = piped.invoke(app, ["profile", "hf:llama", *FAST, "--out", "p.json"])
    assert result.exit_code == 0, result.output
    profile = read_record(tmp_path / "p.json", Profile)
    assert_rows_whole(result.stdout, profile)
    for layer in profile.layers:  # every column is there: memory and the block too
        if layer.memory_bytes:
            assert human_bytes(layer.memory_bytes) in result.stdout
    assert "left out at" not in result.stdout


def test_profile_at_80_columns_keeps_every_key_number(runner: CliRunner, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["profile", "hf:llama", *FAST, "--out", "p.json"])
    assert result.exit_code == 0, result.output
    assert_rows_whole(result.stdout, read_record(tmp_path / "p.json", Profile))
    table_lines = [line for line in result.stdout.splitlines() if "  " in line]
    assert max(len(line.rstrip()) for line in table_lines) <= 80
    assert "left out at 80 columns:" in result.stdout  # what did not fit is named


def test_train_profile_at_80_columns_keeps_backward_time(runner: CliRunner, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["profile", *FAST, "--mode", "train", "--out", "p.json"])
    assert result.exit_code == 0, result.output
    profile = read_record(tmp_path / "p.json", Profile)
    assert "bwd" in result.stdout and "…" not in result.stdout
    for layer in profile.layers:
        incl, own = key_numbers(layer)[:2]
        backward = _ms(layer.backward_time_ms.median if layer.backward_time_ms else None)
        assert re.search(rf"\s{re.escape(incl)}\s+{re.escape(own)}\s+{re.escape(backward)}(\s|$)", result.stdout)


def test_profile_labels_self_and_inclusive_and_attention_time_both_ways(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "hf:llama", *FAST, "--no-save"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "incl." in out and "self" in out and "FLOPs are self" in out
    found = re.search(r"attention time: ([\d.]+)% of the step incl\. .*, ([\d.]+)% self", out)
    assert found, out
    inclusive, own = map(float, found.groups())
    assert inclusive > own > 0  # the projections are inside the inclusive figure only


def test_verbose_adds_the_detail_columns(runner: CliRunner, tmp_path: Path) -> None:
    plain = runner.invoke(app, ["profile", *FAST, "--out", "p.json"])
    verbose = runner.invoke(app, ["-v", "report", "p.json"])
    assert plain.exit_code == 0 and verbose.exit_code == 0, plain.output + verbose.output
    assert "p10–p90" not in plain.stdout and "p10–p90" in verbose.stdout
    step = read_record(tmp_path / "p.json", Profile).totals.time_ms
    assert step is not None and f"{step.p10:.2f}–{step.p90:.2f}" in verbose.stdout


def test_q_proj_is_attention_in_profile_and_cost_model(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", "hf:llama", *FAST, "--out", "p.json"])
    assert result.exit_code == 0, result.output
    profile = read_record(tmp_path / "p.json", Profile)
    by_name = {layer.name: layer for layer in profile.layers}
    q_proj = next(name for name in by_name if name.endswith("self_attn.q_proj"))
    gate = next(name for name in by_name if name.endswith("mlp.gate_proj"))
    norm = next(name for name in by_name if name.endswith("input_layernorm"))
    assert by_name[q_proj].kind == "other"  # what the module itself is: a Linear
    assert block_kind(q_proj, by_name) == cost_kind(q_proj, by_name) == "attention"
    assert block_kind(gate, by_name) == cost_kind(gate, by_name) == "mlp"
    assert block_kind(norm, by_name) == "norm" and cost_kind(norm, by_name) == "other"
    assert re.search(r"^\s+q_proj\s+Linear\s+attention\s", result.stdout, re.M)


@pytest.mark.parametrize("width", [80, 200])
def test_check_table_keeps_baseline_current_and_change(width: int) -> None:
    result = sample_check()
    text = check_text(result, width=width)
    assert "…" not in text
    for metric in shown_metrics(result, show_all=False):
        baseline, current = shown_values(metric)
        assert re.search(rf"{re.escape(baseline)}\s+{re.escape(current)}", text), metric.metric


def test_check_shows_in_full_the_values_rounding_would_make_equal() -> None:
    result = sample_check()
    flops = next(m for m in result.metrics if m.metric == "flops")
    assert flops.status == "changed" and human_count(flops.baseline) == human_count(flops.current)
    assert f"{flops.baseline:,}" in check_text(result, width=80)


def test_a_table_leaves_out_the_lowest_priority_columns_and_says_so() -> None:
    columns = [Column("name", "left"), Column("a", priority=1), Column("b", priority=2), Column("c", priority=3)]
    row = Row(("x" * 30, "1" * 20, "2" * 20, "3" * 20))
    wide = rendered(lambda out: out.print(FittedTable(columns, [row])), 200)
    narrow = rendered(lambda out: out.print(FittedTable(columns, [row])), 60)
    assert "3" * 20 in wide and "left out" not in wide
    assert "1" * 20 in narrow and "2" * 20 not in narrow and "3" * 20 not in narrow
    assert "left out at 60 columns: b, c" in narrow.replace("\n", " ")


def test_console_width_is_columns_when_piped_else_unlimited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.setenv("COLUMNS", "80")
    assert console.stdout_console().width == 80
    monkeypatch.delenv("COLUMNS")
    assert console.stdout_console().width == console.PLAIN_WIDTH


@pytest.mark.slow
def test_tune_tables_at_80_columns_keep_every_candidates_numbers() -> None:
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, {"batch_size": 2, "seq_len": 16, "repeats": 2, "warmup": 1, "threads": 1})
    request = TuneRequest(parse_budget(["memory=1GiB"]), "latency", ["backend", "batch_size"], top_k=2, pareto=True,
                          use_cost_model=False, verify_seconds=1.0)
    outcome = tune(workload, settings, request)
    assert outcome.verifications
    text = rendered(lambda out: print_tune(outcome, out, pareto=True), 80)
    assert "…" not in text and "e+0" not in text  # no number cut, no raw exponent
    for v in outcome.verifications:
        predicted = format_metric("latency_ms", v.predicted.latency_ms)
        measured = format_metric("latency_ms", v.measured.latency_ms if v.measured else None)
        assert re.search(rf"{re.escape(predicted)} ± \S+\s+{re.escape(measured)}", text), (predicted, measured)
