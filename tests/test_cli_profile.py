"""`attnprof profile` in-process: output, JSON, saving, and every bad input with its exit code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app

FAST = ["--batch-size", "1", "--seq-len", "16", "--repeats", "2", "--warmup", "1"]


def test_profile_default_workload_prints_table_and_saves(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", *FAST])
    assert result.exit_code == 0, result.output
    assert re.search(r"\battn +SelfAttention +attention\b", result.stdout) and "total (step)" in result.stdout
    saved = list((tmp_path / "profiles").rglob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["workload"]["target"] == "zoo:decoder"


def test_profile_json_is_only_json(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", "zoo:encoder", *FAST, "--json", "--out", "p.json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["seq_len"] == 16
    assert json.loads((tmp_path / "p.json").read_text()) == data


@pytest.mark.parametrize("sort", ["time", "flops", "memory", "name"])
def test_profile_sort(runner: CliRunner, sort: str) -> None:
    result = runner.invoke(app, ["profile", *FAST, "--sort", sort, "--no-save"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["missing.py"], 2, "no such file"),
        (["zoo:nope"], 2, "unknown zoo workload"),
        (["hf:no-such-model"], 2, "unknown hf: model"),
        (["--dtype", "int8"], 2, "--dtype must be one of"),
        (["--device", "tpu"], 2, "--device must be"),
        (["--device", "cuda"], 4, "no CUDA GPU"),
        (["--backend", "efficient"], 4, "does not run on a CPU"),
        (["--batch-size", "0"], 2, "--batch-size must be a positive integer"),
        (["--seq-len", "-3"], 2, "--seq-len must be a positive integer"),
        (["--repeats", "0"], 2, "--repeats must be a positive integer"),
        (["--mode", "fly"], 2, "--mode must be one of"),
        (["--sort", "color"], 2, "--sort must be one of"),
        (["--clock", "sundial"], 2, "--clock must be one of"),
    ],
)
def test_bad_input_exit_codes(runner: CliRunner, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    result = runner.invoke(app, ["profile", *args])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "profiles").exists()


def test_user_model_errors(runner: CliRunner, models_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", str(models_dir / "syntax_error.py")])
    assert result.exit_code == 3 and "syntax_error.py" in result.stderr
    result = runner.invoke(app, ["profile", str(models_dir / "no_build.py")])
    assert result.exit_code == 2 and "build_model" in result.stderr
    result = runner.invoke(app, ["profile", str(models_dir / "bad_inputs.py")])
    assert result.exit_code == 2 and "example_inputs" in result.stderr
    result = runner.invoke(app, ["profile", str(models_dir / "broken_forward.py")])
    assert result.exit_code == 3
    # The user's frames are shown, attnprof's are not.
    assert "broken_forward.py" in result.stderr and "in compute" in result.stderr
    assert "user bug in forward" in result.stderr
    assert "attnprof/profiling/run.py" not in result.stderr and "attnprof/targets/workload.py" not in result.stderr
    assert not (tmp_path / "profiles").exists()


def test_train_mode_cli(runner: CliRunner, models_dir: Path) -> None:
    result = runner.invoke(app, ["profile", str(models_dir / "encoder_model.py"), "--mode", "train", "--no-save"])
    assert result.exit_code == 0, result.output
    assert "backward:" in result.stdout


def test_long_error_message_is_one_line(runner: CliRunner) -> None:
    result = runner.invoke(app, ["profile", "x" * 300 + ".py"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_saved_profile_has_ordinary_file_mode(runner: CliRunner, tmp_path: Path) -> None:
    import os

    umask = os.umask(0)
    os.umask(umask)
    result = runner.invoke(app, ["profile", *FAST, "--out", "p.json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it
