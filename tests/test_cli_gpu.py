"""`attnprof monitor` and `attnprof profile --trace` in-process, at a fixed width."""

from __future__ import annotations

import gzip
import json
import sys

import pytest

from attnprof.cli.app import app
from tests.fake_nvml import FakeGpu, FakeNvml

FAST = ["--batch-size", "1", "--seq-len", "16", "--repeats", "2", "--warmup", "1"]


def test_monitor_without_nvidia_gpu_exits_4(runner):
    # This machine has no NVIDIA driver; the real pynvml says so.
    result = runner.invoke(app, ["monitor", "--duration", "1"])
    if result.exit_code == 0:
        pytest.skip("an NVIDIA driver is present")
    assert result.exit_code == 4
    assert "attnprof monitor needs an NVIDIA GPU" in result.stderr
    assert "Traceback" not in result.output


def test_monitor_records_and_prints(runner, monkeypatch, tmp_path):
    FakeNvml([FakeGpu("GPU-aaaa"), FakeGpu("GPU-bbbb", name="NVIDIA L4")]).install(monkeypatch)
    result = runner.invoke(app, ["monitor", "--duration", "0.2", "--interval", "0.1", "--record", "rec.json"])
    assert result.exit_code == 0, result.output
    assert "NVIDIA H100 80GB HBM3" in result.stdout and "NVIDIA L4" in result.stdout
    recording = json.loads((tmp_path / "rec.json").read_text())
    assert recording["schema_version"] == 1 and len(recording["gpus"]) == 2 and recording["samples"]


def test_monitor_command_exit_code_passes_through(runner, monkeypatch):
    FakeNvml([FakeGpu("GPU-aaaa")]).install(monkeypatch)
    result = runner.invoke(app, ["monitor", "--interval", "0.1", "--", sys.executable, "-c", "raise SystemExit(5)"])
    assert result.exit_code == 5, result.output
    assert "(exited 5)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0"], "--interval must be at least"),
        (["--pid", "1", "--", "true"], "not both"),
    ],
)
def test_monitor_bad_input_exits_2(runner, args, message):
    result = runner.invoke(app, ["monitor", *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_profile_trace_saves_chrome_trace_next_to_profile(runner, tmp_path):
    result = runner.invoke(app, ["profile", *FAST, "--trace"])
    assert result.exit_code == 0, result.output
    (saved,) = (tmp_path / "profiles").rglob("*.json")
    data = json.loads(saved.read_text())
    trace = data["trace"]
    assert trace["timing_source"] == "cpu_ops" and trace["active_steps"] == 3
    assert set(trace["backends"].values()) == {"flash"}
    assert tmp_path / trace["trace_file"] == saved.with_name(saved.stem + ".pt.trace.json.gz")
    events = json.loads(gzip.decompress((tmp_path / trace["trace_file"]).read_bytes()))["traceEvents"]
    assert any(e.get("name") == "attnprof::layers.0.attn" for e in events)
    assert "Chrome trace:" in result.stderr


def test_profile_trace_file_and_math_backend(runner, tmp_path):
    result = runner.invoke(app, ["profile", *FAST, "--backend", "math", "--trace-file", "out/t.json.gz", "--json",
                                 "--no-save"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["trace"]["backends"] == {f"layers.{i}.attn": "math" for i in range(4)}
    assert (tmp_path / "out" / "t.json.gz").exists()
    assert not (tmp_path / "profiles").exists()


def test_profile_trace_file_must_be_json_gz(runner, tmp_path):
    result = runner.invoke(app, ["profile", *FAST, "--trace-file", "t.json"])
    assert result.exit_code == 2
    assert ".json.gz" in result.stderr


def test_trace_on_meta_device_says_why_nothing_was_traced(runner):
    result = runner.invoke(app, ["profile", *FAST, "--device", "meta", "--trace", "--json", "--no-save"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["trace"] is None
    assert any("nothing was traced" in note for note in data["notes"])
