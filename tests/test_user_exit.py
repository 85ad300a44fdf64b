"""User code that leaves any way but by returning (sys.exit with any code, os._exit in a worker,
GeneratorExit, a KeyboardInterrupt it raises itself) is exit 3 naming the user's code, for every
command that runs it; a check that measured nothing never exits 0, and its result file says why.
A real Ctrl-C stays an interruption (130)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.gate.records import CheckResult
from attnprof.store import read_record

MODEL = '''
import os
import sys
import time

import torch
from torch import nn

{at_import}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        {in_forward}
        return self.lin(x)


def build_model(device, dtype):
    {in_build}
    return Net().to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randn(batch_size, 8, device=device, dtype=dtype),)
'''
PLACES = ("at_import", "in_build", "in_forward")
FAST = ["--repeats", "6", "--warmup", "1"]


def write_model(folder: Path, name: str, place: str | None = None, statement: str = "sys.exit(0)") -> Path:
    code = {key: (statement if key == place else "pass") for key in PLACES}
    path = folder / name
    path.write_text(MODEL.format(**code))
    return path


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    for name in ("ATTNPROF_BASELINE", "ATTNPROF_THRESHOLDS", "ATTNPROF_REPEATS"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


@pytest.fixture
def good_baseline(runner: CliRunner, tmp_path: Path) -> Path:
    good = write_model(tmp_path, "good.py")
    recorded = runner.invoke(app, ["baseline", str(good), "--out", "b.json", *FAST])
    assert recorded.exit_code == 0, recorded.output
    return tmp_path / "b.json"


def assert_names_user_code(output: str, model: Path, what: str) -> None:
    assert what in output, output
    assert "Traceback" in output and f'File "{model}"' in output, output  # the user's own frames


@pytest.mark.parametrize("place", PLACES)
def test_sys_exit_0_in_user_code_is_exit_3_for_profile(runner: CliRunner, tmp_path: Path, place: str) -> None:
    model = write_model(tmp_path, "bad.py", place)
    result = runner.invoke(app, ["profile", str(model), *FAST])
    assert result.exit_code == 3, result.output
    assert_names_user_code(result.output, model, "sys.exit(0)")


@pytest.mark.slow
@pytest.mark.parametrize("place", PLACES)
def test_sys_exit_0_in_user_code_is_exit_3_for_baseline(runner: CliRunner, tmp_path: Path, place: str) -> None:
    model = write_model(tmp_path, "bad.py", place)
    result = runner.invoke(app, ["baseline", str(model), "--out", "b.json", *FAST])
    assert result.exit_code == 3, result.output
    assert "sys.exit(0)" in result.output and "bad.py" in result.output
    assert not (tmp_path / "b.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("place", PLACES)
def test_sys_exit_0_in_user_code_is_exit_3_for_check_and_the_result_says_why(
    runner: CliRunner, tmp_path: Path, good_baseline: Path, place: str
) -> None:
    model = write_model(tmp_path, "bad.py", place)
    args = ["--baseline", str(good_baseline), "--result", "r.json", "--junit", "j.xml", "--markdown", "s.md"]
    result = runner.invoke(app, ["check", str(model), *args])
    assert result.exit_code == 3, result.output
    assert "sys.exit(0)" in result.output and "bad.py" in result.output
    saved = read_record(tmp_path / "r.json", CheckResult)
    assert saved.verdict == "error" and saved.error is not None and "sys.exit(0)" in saved.error
    assert saved.metrics == []
    assert '<error message="' in (tmp_path / "j.xml").read_text()
    assert (tmp_path / "s.md").read_text().startswith("## attnprof check: ⛔ error")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["baseline", "check"])
def test_os_exit_0_in_a_worker_is_exit_3(
    runner: CliRunner, tmp_path: Path, good_baseline: Path, command: str
) -> None:
    # os._exit skips every handler; the gate's measurements run in worker processes, so the
    # worker's silent death is seen, and it ran nothing but the user's model.
    model = write_model(tmp_path, "bad.py", "in_forward", "os._exit(0)")
    if command == "baseline":
        args = ["--out", "new.json", *FAST]
    else:
        args = ["--baseline", str(good_baseline), "--result", "r.json"]
    result = runner.invoke(app, [command, str(model), *args])
    assert result.exit_code == 3, result.output
    assert "bad.py" in result.output and "exited with status 0 before reporting a result" in result.output
    if command == "check":
        assert read_record(tmp_path / "r.json", CheckResult).verdict == "error"


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        ("sys.exit(1)", "sys.exit(1)"),
        ("sys.exit('bye')", "sys.exit('bye')"),
        ("raise GeneratorExit('stop')", "GeneratorExit"),
        ("raise KeyboardInterrupt", "raised KeyboardInterrupt itself"),
    ],
)
def test_every_way_out_of_a_forward_is_exit_3(runner: CliRunner, tmp_path: Path, statement: str, said: str) -> None:
    model = write_model(tmp_path, "bad.py", "in_forward", statement)
    result = runner.invoke(app, ["profile", str(model), *FAST])
    assert result.exit_code == 3, result.output
    assert said in result.output and "bad.py" in result.output


def test_a_real_ctrl_c_is_an_interruption_not_the_users_error(tmp_path: Path) -> None:
    started = tmp_path / "started"
    model = write_model(
        tmp_path, "slow.py", "in_forward", f"open({str(started)!r}, 'w').close(); time.sleep(0.05)"
    )
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-m", "attnprof", "profile", str(model), "--repeats", "100000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not started.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), child.communicate()
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "KeyboardInterrupt itself" not in stderr
