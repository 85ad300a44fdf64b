"""Every command's --help: an example, flags without a value placeholder, text in brackets shown
as written (not taken for rich markup), defaults shown."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from attnprof.cli.app import app

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("NO_COLOR", "1")  # help is drawn 80 wide when not a terminal: words stay whole
    return CliRunner()


def help_of(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_every_command_is_covered() -> None:
    assert {"profile", "tune", "check", "apply", "report", "baseline", "compare", "fit", "predict"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example_and_no_flag_placeholder(wide: CliRunner, command: str) -> None:
    text = help_of(wide, command)
    assert "Examples:" in text
    assert f"attnprof {command} " in text.split("Examples:", 1)[1]
    assert "<bool>" not in text


@pytest.mark.parametrize("command", COMMANDS)
def test_brackets_in_help_are_shown_as_written(wide: CliRunner, command: str) -> None:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    written = [p.help for p in click_command.params if p.help and "[tool.attnprof]" in p.help]
    text = help_of(wide, command)
    assert text.count("[tool.attnprof]") >= len(written)
    assert not re.search(r"default: {2,}[^\s│]", text)  # what markup eating "[tool.attnprof]" used to leave


def test_the_top_level_help(wide: CliRunner) -> None:
    text = help_of(wide)
    assert "[tool.attnprof]" in text and "Examples:" in text and "<bool>" not in text


def test_defaults_are_shown(wide: CliRunner) -> None:
    text = " ".join(help_of(wide, "profile").replace("│", " ").split())  # help text wrapped over lines
    assert "[default: order]" in text  # --sort
    assert "built-in default: 128" in text  # --seq-len, which the environment and pyproject may set
    assert "built-in default: fp32" in text
