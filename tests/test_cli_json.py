"""Every command has --json, and with it stdout is one JSON document and nothing else.

Run the way CI and pipes run attnprof: NO_COLOR set and stdout/stderr not terminals (CliRunner).
A new command must add its cheapest --json invocation to INVOCATIONS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.store import write_record
from tests.samples import sample_plan, sample_profile

MODELS = Path(__file__).parent / "models"
FAST = ["--batch-size", "1", "--seq-len", "8", "--repeats", "1", "--warmup", "0"]

TUNE_FAST = ["--batch-size", "2", "--seq-len", "16", "--repeats", "2", "--warmup", "1", "--out", "plan.json"]

# command name -> (arguments before --json, expected exit code); {profile} and {plan} are saved
# sample records. A command that cannot work here (e.g. one needing a GPU) expects its exit code.
INVOCATIONS: dict[str, tuple[list[str], int]] = {
    "profile": ([*FAST, "--no-save"], 0),
    "report": (["{profile}"], 0),
    "doctor": ([], 0),
    "tune": (
        ["--knobs", "backend,batch_size", "--budget", "latency=10s", "--top-k", "2", "--threads", "1", *TUNE_FAST],
        0,
    ),
    "apply": (["{plan}", "--force"], 0),  # the sample plan names zoo:decoder's layers
    "compare": (["{profile}", "{profile}"], 0),
    "baseline": (["zoo:decoder", "--out", "baseline.json", *FAST], 0),
    # the sample profile comes from another machine: refused before anything is printed
    "check": (["--baseline", "{profile}"], 4),
    # layers that sleep a fixed time: a fit that predicts well whatever the machine's load
    "fit": ([str(MODELS / "sleepy_model.py"), "--batch-size", "1:2", "--seq-len", "8:16", "--dtype", "fp32",
             "--backend", "flash", "--threads", "1", "-n", "4", "--repeats", "1", "--warmup", "0"], 0),
    "predict": (["--batch-size", "2"], 2),  # no model fitted in this folder: a one-line error
}
SLOW = {"tune"}  # measures several configurations


# Commands that have no --json yet, and why; the test below fails once one gains it, so that
# it moves to INVOCATIONS.
WITHOUT_JSON: dict[str, str] = {
    "monitor": "a live view; samples are saved with --record",
    "schema": "its output is a JSON Schema, JSON already",
}


def registered_commands() -> dict[str, object]:
    command = typer.main.get_command(app)
    return dict(command.commands)  # type: ignore[attr-defined]


def test_every_command_has_a_json_flag_and_an_invocation() -> None:
    commands = registered_commands()
    for name, command in commands.items():
        flags = {opt for param in command.params for opt in getattr(param, "opts", [])}  # type: ignore[attr-defined]
        if name in WITHOUT_JSON:
            assert "--json" not in flags, f"`attnprof {name}` has --json now: move it to INVOCATIONS"
        else:
            assert "--json" in flags, f"`attnprof {name}` has no --json flag"
    missing = set(commands) - set(INVOCATIONS) - set(WITHOUT_JSON)
    assert not missing, f"add a --json invocation for {missing}"


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(INVOCATIONS)]
)
def test_json_stdout_is_only_json(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if name not in registered_commands():
        pytest.skip(f"`attnprof {name}` is not registered")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    files = {"profile": tmp_path / "profile.json", "plan": tmp_path / "plan.json"}
    write_record(files["profile"], sample_profile())
    write_record(files["plan"], sample_plan())
    template, expected_exit = INVOCATIONS[name]
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in template]
    result = CliRunner().invoke(app, [name, *args, "--json"])
    assert result.exit_code == expected_exit, result.output
    if result.exit_code == 0:
        json.loads(result.stdout)  # the whole of stdout is one JSON document
    else:  # a failure says why on stderr and leaves stdout empty
        assert result.stdout == "" and "attnprof: error:" in result.stderr, result.output
    assert "\x1b[" not in result.stdout + result.stderr
