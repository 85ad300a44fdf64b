"""`python -m attnprof` and the `attnprof` command: the CLI, with Ctrl-C and SIGTERM turned into
quiet exits (130 / 143) from the first line to the last, start-up imports and teardown included."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

INTERRUPTED = (130, 143)  # 128 + SIGINT, 128 + SIGTERM


def main() -> None:
    try:
        from attnprof.profiling.faults import raise_on_sigterm

        raise_on_sigterm()  # before the seconds of imports below
        from attnprof.cli.app import main as run_cli

        code = run_cli()
    except KeyboardInterrupt as exc:  # during start-up; the app handles its commands' own
        sys.stderr.write("attnprof: error: interrupted\n")
        code = getattr(exc, "exit_code", 130)
    exit_at_once_on_signals()
    if code in INTERRUPTED:
        # A Ctrl-C that lands while C code runs Python (an extension module's initialisation)
        # leaves the interpreter's "unhandled KeyboardInterrupt" mark set although it was handled
        # here, and the interpreter would then end itself by SIGINT (status -2, not 130).
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
    sys.exit(code)


def exit_at_once_on_signals() -> None:
    """From here on, Ctrl-C or SIGTERM ends the process at once with 128 + the signal's number:
    the work is done, and interpreter teardown (which can take seconds with torch loaded) must
    not print a traceback."""

    def leave(signum: int, frame: FrameType | None) -> None:
        os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, leave)


if __name__ == "__main__":
    main()
