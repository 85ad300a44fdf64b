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


class _Verbosity:
    quiet = False


def set_quiet(quiet: bool) -> None:
    _Verbosity.quiet = quiet


def log(message: str) -> None:
    """A progress or status line on stderr (suppressed by -q)."""
    if not _Verbosity.quiet:
        _console(True).print(message)


def error(message: str) -> None:
    """A one-line error on stderr."""
    _console(True).print(f"attnprof: error: {message}", markup=False)


def warning(message: str) -> None:
    """A warning on stderr, shown even with -q: it qualifies the output."""
    _console(True).print(f"attnprof: warning: {message}", markup=False)
