"""The typer app, global flags, and the mapping from attnprof's errors to exit codes.

Everything that goes wrong inside the app ends in one line on stderr: a bad flag or value
(exit 2, click's usage error without its usage box), an AttnprofError (its exit code), Ctrl-C
or SIGTERM anywhere in a command (130 / 143). While a command runs, stdout carries only its
results (report.console.results_only_on_stdout).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import traceback
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup

from attnprof.cli import options
from attnprof.errors import AttnprofError, UserCodeError
from attnprof.profiling.faults import known_failure
from attnprof.profiling.progress import install_tracker
from attnprof.report import progress
from attnprof.report.console import error, printable, results_only_on_stdout, set_verbosity
from attnprof.store import paths_from_here
from attnprof.version import __version__

F = TypeVar("F", bound=Callable[..., Any])


class _Commands(TyperGroup):
    """attnprof's command group: usage errors in one line, interrupts as quiet exits."""

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            error("aborted")
            code = 1
        except AttnprofError as exc:  # a value the option parsers refuse (cli/options.py)
            error(str(exc))
            code = exc.exit_code
        except Exception as exc:
            if not _is_usage_error(exc):
                raise
            context = getattr(exc, "ctx", None)
            hint = f" (see {context.command_path} --help)" if context is not None else ""
            message = exc.format_message()  # type: ignore[attr-defined]
            if message:  # no arguments at all: the help was the answer
                error(message + hint)
            code = exc.exit_code  # type: ignore[attr-defined]
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # Ctrl-C: 130; SIGTERM arrives as Terminated: 143
            error("interrupted")
            raise typer.Exit(getattr(exc, "exit_code", 130)) from None


def _is_usage_error(exc: Exception) -> bool:
    """click's errors (a bad flag or value, a missing argument), whichever click typer uses."""
    return callable(getattr(exc, "format_message", None)) and isinstance(getattr(exc, "exit_code", None), int)


app = typer.Typer(
    name="attnprof",
    cls=_Commands,
    help="Profile and tune attention workloads in PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _GlobalFlags:
    debug = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnprof {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: bool = options.DEBUG,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or status lines on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail on stderr about what was done."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if quiet and verbose:
        raise typer.BadParameter("-q and -v contradict each other: give one")
    _GlobalFlags.debug = debug
    install_tracker(progress.track, progress.progress, progress.spinning)  # the loops draw the CLI's bars
    set_verbosity(-1 if quiet else 1 if verbose else 0)


def handle_errors(command: F, owns_stdout: bool = True) -> F:
    """AttnprofError -> one line on stderr and its exit code; the user's traceback for exit 3;
    out of memory -> exit 4. A command that `owns_stdout` prints only its results there."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = _GlobalFlags.debug or bool(kwargs.get("debug"))
        try:
            # Relative paths are taken from where the command started, whatever the user's code
            # does with the working directory.
            with paths_from_here(), results_only_on_stdout() if owns_stdout else contextlib.nullcontext():
                return command(*args, **kwargs)
        except Exception as exc:
            known = known_failure(exc)
            if known is None:
                raise
            if debug:
                traceback.print_exc()
            elif isinstance(known, UserCodeError) and known.user_traceback:
                sys.stderr.write(printable(known.user_traceback, keep_newlines=True))
            error(str(known))
            raise typer.Exit(known.exit_code) from None

    return wrapper  # type: ignore[return-value]


def register(name: str, command: Callable[..., Any], owns_stdout: bool = True) -> None:
    app.command(name)(handle_errors(command, owns_stdout))


def _register_commands() -> None:
    # Imported here so that `attnprof --help` lists every command and each module stays free of app.py.
    from attnprof.cli.apply import apply_command
    from attnprof.cli.doctor import doctor_command
    from attnprof.cli.fit import fit_command
    from attnprof.cli.monitor import monitor_command
    from attnprof.cli.predict import predict_command
    from attnprof.cli.profile import profile_command
    from attnprof.cli.report import report_command
    from attnprof.cli.tune import tune_command

    register("profile", profile_command)
    register("report", report_command)
    register("doctor", doctor_command)
    register("monitor", monitor_command, owns_stdout=False)  # the watched command keeps its stdout
    register("tune", tune_command)
    register("apply", apply_command)
    register("fit", fit_command)
    register("predict", predict_command)

    from attnprof.cli.baseline import baseline_command
    from attnprof.cli.check import check_command
    from attnprof.cli.compare import compare_command

    register("check", check_command)
    register("compare", compare_command)
    register("baseline", baseline_command)


_register_commands()


def main() -> int:
    """The command line (argv), once imported: its exit code. `attnprof.__main__` runs it with
    the interrupts of start-up and teardown handled too."""
    return typing.cast(int, app(standalone_mode=False))
