"""Consoles: data goes to stdout, logs and progress to stderr; plain when not a TTY or NO_COLOR."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Fixed width when not a terminal, so piped output and tests are stable.
PLAIN_WIDTH = 160


def _console(stream_is_stderr: bool) -> Console:
    stream = sys.stderr if stream_is_stderr else sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream,
        width=None if tty else PLAIN_WIDTH,
        no_color=bool(os.environ.get("NO_COLOR")) or not tty,
        highlight=False,
        soft_wrap=False,
        force_terminal=None if tty else False,
    )


def stdout_console() -> Console:
    return _console(False)


def stderr_console() -> Console:
    return _console(True)


class _Verbosity:
    level = 0  # -1 quiet (-q), 0 normal, 1 verbose (-v)


def set_verbosity(level: int) -> None:
    _Verbosity.level = max(-1, min(level, 1))


def is_quiet() -> bool:
    return _Verbosity.level < 0


def is_verbose() -> bool:
    return _Verbosity.level > 0


def log(message: str) -> None:
    """A status line on stderr (suppressed by -q)."""
    if not is_quiet():
        stderr_console().print(message, markup=False)


def detail(message: str) -> None:
    """A line only -v asks for: what was measured, skipped or assumed along the way."""
    if is_verbose():
        stderr_console().print(message, markup=False, style="dim")


def warn(message: str) -> None:
    """A warning on stderr: shown even with -q, since it may change how results are read."""
    stderr_console().print(f"attnprof: warning: {message}", markup=False)


def error(message: str) -> None:
    """A one-line error on stderr."""
    stderr_console().print(f"attnprof: error: {message}", markup=False, soft_wrap=True)  # one line, never wrapped
