"""Consoles: plain text when not a terminal or when NO_COLOR is set; colour only on a terminal."""

from __future__ import annotations

import io

import pytest

from attnprof.report import console


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_is_plain_at_a_fixed_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    out = console.stdout_console()
    assert out.no_color and not out.is_terminal and out.width == console.PLAIN_WIDTH


def test_a_terminal_has_colour_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", FakeTerminal())
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert console.stderr_console().is_terminal and not console.stderr_console().no_color
    monkeypatch.setenv("NO_COLOR", "1")
    assert console.stderr_console().no_color


def test_verbosity_levels(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(console._Verbosity, "level", 0)
    console.log("status [not markup]")
    console.detail("only with -v")
    console.set_verbosity(1)
    console.detail("shown with -v")
    console.set_verbosity(-1)
    console.log("hidden by -q")
    console.warn("shown even with -q")
    err = capsys.readouterr().err
    assert "status [not markup]" in err and "shown with -v" in err and "attnprof: warning: shown even with -q" in err
    assert "only with -v" not in err and "hidden by -q" not in err
