"""What other tools read from attnprof's files: the CSV's attention columns, TensorBoard's and
HTA's trace conventions, JUnit's suite attributes, and titles that name the command that ran."""

from __future__ import annotations

import csv
import gzip
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import torch.distributed as dist
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.profiling.run import run_profile
from attnprof.settings import Settings
from attnprof.store import read_json
from attnprof.targets.load import load_workload

FAST = ["--batch-size", "1", "--seq-len", "16", "--repeats", "2", "--warmup", "1"]


def test_csv_export_has_the_attention_columns(runner: CliRunner, tmp_path: Path) -> None:
    assert runner.invoke(app, ["profile", *FAST, "--out", "p.json"]).exit_code == 0
    result = runner.invoke(app, ["report", "p.json", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))

    def whole(cell: str) -> int:  # an integer column with gaps is written as floats, as pandas holds it
        return int(float(cell))

    profile = read_json(tmp_path / "p.json")
    attention = {layer["name"]: layer["attention"] for layer in profile["layers"] if layer["attention"]}
    assert attention
    for row in rows:
        if row["name"] in attention:
            info = attention[row["name"]]
            assert whole(row["attention_flops"]) == info["flops"] and whole(row["num_heads"]) == info["num_heads"]
            assert whole(row["num_kv_heads"]) == info["num_kv_heads"] and whole(row["head_dim"]) == info["head_dim"]
            assert row["attention_backend"] == info["backend"]
        else:
            assert row["attention_flops"] == row["num_heads"] == row["attention_backend"] == ""


def test_trace_is_named_for_tensorboard_and_carries_distributed_info(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", "zoo:gpt", *FAST, "--trace", "--out", "run.json"])
    assert result.exit_code == 0, result.output
    trace_file = tmp_path / read_json(tmp_path / "run.json")["trace"]["trace_file"]
    assert trace_file.name == "run.pt.trace.json.gz"
    trace = json.loads(gzip.decompress(trace_file.read_bytes()))
    assert trace["distributedInfo"] == {"backend": "none", "rank": 0, "world_size": 1}
    assert trace["traceEvents"]


def test_a_process_group_s_own_distributed_info_is_kept(tmp_path: Path) -> None:
    """In a (gloo) process group torch writes distributedInfo itself; attnprof keeps it."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        workload = load_workload("zoo:gpt")
        trace_file = tmp_path / "t.pt.trace.json.gz"
        run_profile(workload, Settings(batch_size=1, seq_len=16, repeats=2, warmup=1), trace=True,
                    trace_file=trace_file)
    finally:
        dist.destroy_process_group()
    info = json.loads(gzip.decompress(trace_file.read_bytes()))["distributedInfo"]
    assert (info["backend"], info["rank"], info["world_size"]) == ("gloo", 0, 1) and "pg_count" in info


def test_compare_names_itself_and_junit_has_time_host_and_timestamp(runner: CliRunner, tmp_path: Path) -> None:
    assert runner.invoke(app, ["profile", *FAST, "--out", "a.json"]).exit_code == 0
    result = runner.invoke(app, ["compare", "a.json", "a.json", "--junit", "junit.xml", "--result", "r.json",
                                 "--markdown", "s.md"])
    assert result.exit_code == 0, result.output
    assert "attnprof compare:" in result.stdout and "attnprof check" not in result.stdout
    assert (tmp_path / "s.md").read_text().startswith("## attnprof compare:")
    saved = read_json(tmp_path / "r.json")
    assert saved["command"] == "compare" and saved["created"] and saved["duration_s"] >= 0
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    suite = suites.find("testsuite")
    assert suites.get("name") == "attnprof compare" and suite is not None
    assert suite.get("hostname") == read_json(tmp_path / "a.json")["machine"]["hostname"]
    assert suite.get("timestamp") == saved["created"].removesuffix("+00:00")
    assert float(suite.get("time", "")) == float(suites.get("time", "")) == round(saved["duration_s"], 3)


def test_a_dry_run_prints_no_percent_of_peak(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", *FAST, "--device", "meta", "--no-save"])
    assert result.exit_code == 0, result.output
    assert "% of peak" not in result.stdout and "calibrate" not in result.stdout
    dry = runner.invoke(app, ["profile", *FAST, "--device", "meta", "--no-save", "--json"])
    assert json.loads(dry.stdout)["peak"] is None
