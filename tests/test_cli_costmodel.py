"""`attnprof fit` and `attnprof predict` in-process: tables, saved files, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.costmodel.records import CostModel
from attnprof.store import read_record

SMALL = [
    "--batch-size",
    "1:3",
    "--seq-len",
    "8:24",
    "--dtype",
    "fp32",
    "--backend",
    "math,flash",
    "--threads",
    "1",
    "--repeats",
    "2",
    "--warmup",
    "1",
]


@pytest.fixture
def fitted(runner: CliRunner, tmp_path: Path) -> Path:
    result = runner.invoke(app, ["fit", "zoo:decoder", *SMALL, "-n", "12"])
    assert result.exit_code == 0, result.output
    assert "latency MAPE" in result.stdout and "top-1 agreement" in result.stdout
    assert "measured 12 new, reused 0" in result.stderr
    (path,) = (tmp_path / "profiles").rglob("costmodel-*.json")
    return path


@pytest.mark.slow
def test_fit_saves_a_validated_model_and_resumes(runner: CliRunner, fitted: Path, tmp_path: Path) -> None:
    model = read_record(fitted, CostModel)
    assert model.measurements == 12 and model.validation is not None
    assert model.validation.points == 12 and model.validation.top1_decisions == 6
    assert set(model.groups) == {
        "backend=flash,device=cpu,dtype=fp32,mode=infer,threads=1",
        "backend=math,device=cpu,dtype=fp32,mode=infer,threads=1",
    }
    (store,) = (tmp_path / "profiles").rglob("measurements-*.jsonl")
    assert len(store.read_text().splitlines()) == 12
    again = runner.invoke(app, ["fit", "zoo:decoder", *SMALL, "-n", "12"])
    assert again.exit_code == 0, again.output
    assert "measured 0 new, reused 12" in again.stderr
    assert len(store.read_text().splitlines()) == 12


@pytest.mark.slow
def test_predict_within_and_beyond_the_measured_range(runner: CliRunner, fitted: Path) -> None:
    # threads left out: the model measured one value, 1, and predicts for it.
    inside = runner.invoke(app, ["predict", "zoo:decoder", "-b", "2", "-s", "16", "--backend", "flash", "--json"])
    assert inside.exit_code == 0, inside.output
    prediction = json.loads(inside.stdout)
    assert prediction["time_ms"] > 0 and prediction["memory_bytes"] > 0 and not prediction["extrapolated"]
    assert prediction["time_ms"] == pytest.approx(sum(prediction["kind_time_ms"].values()))
    assert sum(layer["time_ms"] for layer in prediction["layers"]) == pytest.approx(prediction["time_ms"], rel=1e-6)
    table = runner.invoke(app, ["predict", "zoo:decoder", "-b", "2", "-s", "16", "--threads", "1", "--backend", "math"])
    assert table.exit_code == 0 and "total (step)" in table.stdout and "peak memory" in table.stdout
    far = runner.invoke(app, ["predict", "zoo:decoder", "-b", "16", "-s", "2048", "--backend", "flash"])
    assert far.exit_code == 0, far.output
    assert "warning: seq_len=2048 is outside the measured range 8..24" in far.stderr
    unmeasured = runner.invoke(app, ["predict", "zoo:decoder", "--dtype", "bf16", "--backend", "flash"])
    assert unmeasured.exit_code == 2 and "no measurements for" in unmeasured.stderr
    # Two backends measured and none chosen: the error names what was measured.
    ambiguous = runner.invoke(app, ["predict", "zoo:decoder"])
    assert ambiguous.exit_code == 2 and "backend=flash" in ambiguous.stderr and "backend=math" in ambiguous.stderr
    other = runner.invoke(app, ["predict", "zoo:encoder", "--model", str(fitted)])
    assert other.exit_code == 2 and "another architecture" in " ".join(other.stderr.split())


def test_a_cpu_clock_sweep_is_keyed_by_its_clock_and_predicted_with_it(runner: CliRunner) -> None:
    small = ["--batch-size", "1:2", "--seq-len", "8:16", "--dtype", "fp32", "--backend", "flash", "--threads", "1"]
    result = runner.invoke(app, ["fit", "zoo:decoder", *small, "--repeats", "2", "-n", "4", "--clock", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    model = json.loads(result.stdout)
    assert all("clock=cpu" in group for group in model["groups"])
    # predict takes the clock the model was measured with; no flag needed.
    prediction = runner.invoke(app, ["predict", "zoo:decoder", "-b", "2", "-s", "12", "--json"])
    assert prediction.exit_code == 0, prediction.output
    assert json.loads(prediction.stdout)["time_ms"] > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["fit", "zoo:decoder", "--seq-len", "64:8"], "1 <= low <= high"),
        (["fit", "zoo:decoder", "--batch-size", "two"], "not an integer"),
        (["fit", "zoo:decoder", "--dtype", "fp8"], "not one of"),
        (["fit", "zoo:decoder", "--time-budget", "soon"], "positive duration"),
        (["fit", "zoo:decoder", "-n", "1"], "at least 4"),
        (["fit", "zoo:decoder", "--folds", "1"], "--folds"),
        (["fit", "zoo:decoder", "--clock", "sundial"], "--clock must be one of"),
        (["fit", "zoo:nope"], "zoo"),
        (["predict", "zoo:decoder"], "run `attnprof fit` first"),
        (["predict", "zoo:decoder", "--model", "missing.json"], "no such file"),
    ],
)
def test_bad_input_is_one_line_with_exit_2(runner: CliRunner, arguments: list[str], message: str) -> None:
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_a_backend_the_cpu_lacks_exits_4(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        [
            "fit",
            "zoo:decoder",
            "--backend",
            "efficient",
            "--dtype",
            "fp32",
            "--batch-size",
            "1",
            "--seq-len",
            "8",
            "-n",
            "1",
            "--repeats",
            "1",
        ],
    )
    assert result.exit_code == 4 and "does not run on a CPU" in result.stderr


def test_corrupt_model_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"schema_version": 1, "target": 3}')
    result = runner.invoke(app, ["predict", "zoo:decoder", "--model", "bad.json"])
    assert result.exit_code == 2 and "bad.json" in result.stderr


@pytest.mark.slow
def test_a_fit_its_own_cross_validation_rejects_exits_1(runner: CliRunner, models_dir: Path, tmp_path: Path) -> None:
    target = str(models_dir / "erratic_model.py")
    result = runner.invoke(app, ["fit", target, "--batch-size", "1:4", "--seq-len", "4:13", "--dtype", "fp32",
                                 "--backend", "math", "--threads", "1", "--repeats", "2", "--warmup", "1", "-n", "8"])
    assert result.exit_code == 1, result.output
    (line,) = [row for row in result.stderr.splitlines() if "not usable" in row]
    assert "latency" in line and "MAPE" in line and "above 50%" in line and "8 measurements" in line
    (saved,) = (tmp_path / "profiles").rglob("costmodel-*.json")  # still saved, for a look at what went wrong
    model = read_record(saved, CostModel)
    assert model.validation is not None and model.validation.latency_mape > 50
    assert model.unusable_reason() is not None
