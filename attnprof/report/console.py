"""Consoles: data goes to stdout, logs and progress to stderr; plain when not a TTY or NO_COLOR.

Text from the user's data (layer names, exception messages, targets) can hold control
characters: every console here shows them escaped (`printable`), so an ESC sequence never
reaches the terminal raw and a one-line error stays one line. While a command runs, stdout
carries its results only (`results_only_on_stdout`): what the user's code prints goes to stderr.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from rich.console import Console
from rich.segment import Segment

from attnprof import store

# C0 and C1 controls (ESC, carriage return, backspace, ...) and the Unicode marks that reorder
# text on screen (bidirectional overrides and isolates). Tab stays: it is only white space.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with each control character written as its escape (`\\x1b`, `\\n`)."""
    pattern = _CONTROLS_BUT_NEWLINE if keep_newlines else _CONTROLS
    return pattern.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


# What XML 1.0 cannot hold at all, even escaped: most C0 controls, surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """`text` (XML already serialised) with each character XML cannot hold written as its escape,
    so that a control character in a metric's name or detail keeps the document well-formed."""
    return _NOT_XML.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


class SafeConsole(Console):
    """A rich Console that escapes control characters in what it prints (its own styling is
    added after this, from each segment's style, so colours still work)."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment if segment.control else Segment(printable(segment.text, keep_newlines=True), segment.style)
            for segment in buffer
        )


class _Results:
    stream: TextIO | None = None  # the real stdout while a command runs, else None: sys.stdout


def results_stream() -> TextIO:
    """Where a command's results go: stdout, even while the user's code prints to stderr."""
    return _Results.stream or sys.stdout


def print_result(text: str, end: str = "\n") -> None:
    """A command's result (its JSON, say) on stdout."""
    stream = results_stream()
    stream.write(text + end)
    stream.flush()


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[None]:
    """While this runs, anything written to stdout goes to stderr (the user's code printing,
    from Python or from C, and processes it starts), except through results_stream().

    With a real stdout, descriptor 1 itself points at stderr for the while and the real stdout
    is kept under another descriptor, which is also what /dev/stdout means to attnprof's writer.
    """
    results = sys.stdout
    saved: int | None = None
    try:
        results.flush()
        if results.fileno() == 1:
            saved = os.dup(1)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        saved = None  # not a real stdout (a test's capture): Python-level diversion only
    real: TextIO = results
    if saved is not None:
        real = open(  # noqa: SIM115 (closed in the finally below, after the command)
            saved, "w", encoding=results.encoding, errors=results.errors, buffering=1, closefd=False
        )
        os.dup2(2, 1)
        store.descriptor_stand_ins[1] = saved
    _Results.stream, sys.stdout = real, sys.stderr
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            real.flush()
        sys.stdout, _Results.stream = results, None
        if saved is not None:
            real.close()
            store.descriptor_stand_ins.pop(1, None)
            os.dup2(saved, 1)
            os.close(saved)

# Not a terminal: wide enough that no table is ever cut (a number is never shortened to "…");
# COLUMNS, when set, is the width asked for instead.
PLAIN_WIDTH = 10_000


def plain_width() -> int:
    """The width of output that is not a terminal: COLUMNS when it is set to a width, else unlimited."""
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and 20 <= int(columns) <= PLAIN_WIDTH else PLAIN_WIDTH


def _console(stream_is_stderr: bool) -> Console:
    stream = sys.stderr if stream_is_stderr else results_stream()
    tty = stream.isatty()
    return SafeConsole(
        file=stream,
        width=None if tty else plain_width(),
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
    """A one-line error on stderr (a newline in the message is shown as \\n)."""
    stderr_console().print(f"attnprof: error: {printable(message)}", markup=False, soft_wrap=True)  # never wrapped
