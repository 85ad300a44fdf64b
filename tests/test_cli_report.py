"""`attnprof report`, `profile --html`, `doctor` and the global -q/-v flags, in-process."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.profiling.records import load_profile
from attnprof.report.plots import attention_blocks
from attnprof.report.svg import count_marks

FAST = ["--batch-size", "1", "--seq-len", "16", "--repeats", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real profile of the default workload, saved with its HTML report written by `profile --html`."""
    folder = tmp_path_factory.mktemp("profiled")
    result = CliRunner().invoke(
        app, ["profile", *FAST, "--out", str(folder / "p.json"), "--html", str(folder / "p.html")]
    )
    assert result.exit_code == 0, result.output
    return folder / "p.json", folder / "p.html"


def test_profile_html_has_every_chart_with_a_mark_per_layer(profiled: tuple[Path, Path]) -> None:
    path, html_path = profiled
    profile = load_profile(path)
    html = html_path.read_text()
    figures = re.findall(r"<figure.*?</figure>", html, re.DOTALL)
    assert len(figures) == 3
    time_chart, roofline, memory = figures
    blocks = attention_blocks(profile)
    assert len(blocks) == sum(1 for layer in profile.layers if layer.kind == "attention") > 0
    assert count_marks(time_chart, "attention") == len(blocks)
    computing = [layer for layer in profile.layers if layer.flops > 0 and layer.bytes > 0 and layer.self_time_ms]
    assert count_marks(roofline) == len(computing)
    assert count_marks(memory) == sum(1 for layer in profile.layers if layer.memory_bytes > 0)
    assert not re.search(r"https?://|//cdn", html)


def test_report_default_is_the_profile_table(runner: CliRunner, profiled: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["report", str(profiled[0])])
    assert result.exit_code == 0, result.output
    assert re.search(r"\battn +SelfAttention +attention\b", result.stdout) and "total (step)" in result.stdout
    assert "\x1b[" not in result.stdout


@pytest.mark.parametrize("fmt", ["markdown", "json", "csv", "html", "table"])
def test_report_text_formats_to_stdout(runner: CliRunner, profiled: tuple[Path, Path], fmt: str) -> None:
    result = runner.invoke(app, ["report", str(profiled[0]), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    if fmt == "json":
        assert json.loads(result.stdout) == json.loads(profiled[0].read_text())
    elif fmt == "csv":
        frame = pd.read_csv(io.StringIO(result.stdout))
        assert len(frame) == len(load_profile(profiled[0]).layers)
    elif fmt == "markdown":
        assert result.stdout.startswith("# attnprof profile")
    elif fmt == "html":
        assert result.stdout.startswith("<!DOCTYPE html>")


def test_report_to_a_file_logs_on_stderr_only(runner: CliRunner, profiled: tuple[Path, Path], tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(profiled[0]), "-f", "markdown", "-o", "r.md"])
    assert result.exit_code == 0 and result.stdout == "" and "wrote r.md" in result.stderr
    assert (tmp_path / "r.md").read_text().startswith("# attnprof profile")
    quiet = runner.invoke(app, ["-q", "report", str(profiled[0]), "-f", "csv", "-o", "r.csv"])
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_report_parquet(runner: CliRunner, profiled: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    result = runner.invoke(app, ["report", str(profiled[0]), "--format", "parquet", "--out", "p.parquet"])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(tmp_path / "p.parquet")
    assert len(frame) == len(load_profile(profiled[0]).layers) and "time_ms" in frame.columns


def test_report_roofline_peaks_from_flags(runner: CliRunner, profiled: tuple[Path, Path]) -> None:
    args = ["report", str(profiled[0]), "-f", "html", "--peak-tflops", "2", "--peak-bandwidth", "100"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "peak 2 TFLOP/s, 100 GB/s" in result.stdout and "given on the command line" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.json"], "no such file"),
        (["corrupt.json"], "corrupt file"),
        (["other.json"], "not a record attnprof can report on"),
        (["PROFILE", "--format", "pdf"], "--format must be one of"),
        (["PROFILE", "--format", "parquet"], "writes a binary file"),
        (["PROFILE", "--format", "junit"], "--format junit is for a check record, not a profile record"),
        (["PROFILE", "--peak-tflops", "2"], "needs both --peak-tflops and --peak-bandwidth"),
        (["PROFILE", "--peak-tflops", "-1", "--peak-bandwidth", "5"], "--peak-tflops must be a positive number"),
    ],
)
def test_report_bad_inputs(
    runner: CliRunner, profiled: tuple[Path, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "corrupt.json").write_text('{"schema_version": 1, "layers": [')
    (tmp_path / "other.json").write_text('{"schema_version": 1, "hello": "world"}')
    args = [str(profiled[0]) if a == "PROFILE" else a for a in args]
    result = runner.invoke(
        app, ["report", *args, "--out", "never.html"] if "parquet" not in args else ["report", *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "never.html").exists()


def test_doctor_table_and_json(runner: CliRunner) -> None:
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "cpu flash" in result.stdout and "transformers" in result.stdout
    data = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert {"section", "name", "status", "detail", "fix"} <= set(data["findings"][0])


def test_quiet_and_verbose_together_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["-q", "-v", "doctor"])
    assert result.exit_code == 2 and "contradict" in result.output


@pytest.mark.slow
def test_tune_writes_the_plan_report_with_its_frontier(runner: CliRunner, tmp_path: Path) -> None:
    args = ["--knobs", "backend,batch_size", "--budget", "latency=10s", "--top-k", "2", "--threads", "1"]
    result = runner.invoke(app, ["tune", *args, *FAST, "--out", "plan.json", "--html", "plan.html", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan == json.loads((tmp_path / "plan.json").read_text())
    assert sum(point["chosen"] for point in plan["frontier"]) == 1
    html = (tmp_path / "plan.html").read_text()
    figures = re.findall(r"<figure.*?</figure>", html, re.DOTALL)
    # one chart per figure in its own unit (latency, memory, throughput), then the frontier
    assert [re.search(r'aria-label="(\w+)', f).group(1) for f in figures] == [  # type: ignore[union-attr]
        "Latency", "Peak", "Throughput", "Pareto"
    ]
    assert count_marks(figures[-1], "chosen plan") == 1
    assert count_marks(figures[-1]) == len(plan["frontier"])
    assert not re.search(r"https?://|//cdn", html)


def test_verbose_adds_detail_on_stderr_only(runner: CliRunner, profiled: tuple[Path, Path]) -> None:
    plain = runner.invoke(app, ["report", str(profiled[0]), "-f", "csv"])
    verbose = runner.invoke(app, ["-v", "report", str(profiled[0]), "-f", "csv"])
    assert plain.exit_code == verbose.exit_code == 0
    assert plain.stdout == verbose.stdout
    assert "a profile record, rendered as csv" in verbose.stderr and plain.stderr == ""


def test_dry_run_profile_html_renders_without_times(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", "--device", "meta", "--no-save", "--html", "dry.html"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "dry.html").read_text()
    figures = re.findall(r"<figure.*?</figure>", html, re.DOTALL)
    assert len(figures) == 3 and "not timed (a dry run)" in figures[0]
    assert count_marks(figures[0]) == 0 and count_marks(figures[1]) == 0  # no times, no achieved TFLOP/s
    assert count_marks(figures[2]) > 0  # memory is known without running


@pytest.fixture
def merged_file(tmp_path: Path) -> Path:
    from attnprof.store import write_record
    from tests.samples import sample_distributed

    path = tmp_path / "profile-ranks2.json"
    write_record(path, sample_distributed())
    return path


def test_report_renders_a_distributed_profile_as_rank_0_prints_it(runner: CliRunner, merged_file: Path) -> None:
    result = runner.invoke(app, ["report", str(merged_file)])
    assert result.exit_code == 0, result.output
    assert "zoo:decoder · 2 ranks (gloo, mesh tp 2) · tensor_parallel=2" in result.stdout
    assert "slowest rank 1; imbalance (max/mean step) 1.05: balanced" in result.stdout
    assert re.search(r"layers\.0 +[\d.]+ +[\d.]+ +0\.25 +0\.25", result.stdout), result.stdout


@pytest.mark.parametrize("fmt", ["markdown", "json", "csv", "html"])
def test_report_writes_a_distributed_profile_in_every_format_it_has(
    runner: CliRunner, merged_file: Path, fmt: str
) -> None:
    result = runner.invoke(app, ["report", str(merged_file), "--format", fmt])
    assert result.exit_code == 0, result.output
    if fmt == "json":
        assert json.loads(result.stdout) == json.loads(merged_file.read_text())
    elif fmt == "csv":  # the per-rank table
        frame = pd.read_csv(io.StringIO(result.stdout))
        assert list(frame["rank"]) == [0, 1] and list(frame["slowest"]) == [False, True]
        assert list(frame["collectives ms"]) == [0.75, 0.75]
    else:
        assert "imbalance (max/mean step) 1.05" in result.stdout and "per-layer time per rank" in result.stdout


def test_report_refuses_a_check_format_for_a_distributed_profile_in_one_line(
    runner: CliRunner, merged_file: Path
) -> None:
    result = runner.invoke(app, ["report", str(merged_file), "--format", "junit"])
    assert result.exit_code == 2
    assert "--format junit is for a check record, not a distributed record" in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1
