"""The typer app, global flags, and the mapping from attnprof's errors to exit codes."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from attnprof.cli import options
from attnprof.errors import UserCodeError
from attnprof.profiling.faults import known_failure, raise_on_sigterm
from attnprof.profiling.progress import install_tracker
from attnprof.report import progress
from attnprof.report.console import error, set_verbosity
from attnprof.version import __version__

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="attnprof",
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
    install_tracker(progress.track)  # the measuring loops draw the CLI's progress bar
    set_verbosity(-1 if quiet else 1 if verbose else 0)


def handle_errors(command: F) -> F:
    """AttnprofError -> one line on stderr and its exit code; the user's traceback for exit 3;
    out of memory -> exit 4."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = _GlobalFlags.debug or bool(kwargs.get("debug"))
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            known = known_failure(exc)
            if known is None:
                raise
            if debug:
                traceback.print_exc()
            elif isinstance(known, UserCodeError) and known.user_traceback:
                sys.stderr.write(known.user_traceback)
            error(str(known))
            raise typer.Exit(known.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C: 130; SIGTERM arrives as Terminated: 143
            error("interrupted")
            raise typer.Exit(getattr(exc, "exit_code", 130)) from None

    return wrapper  # type: ignore[return-value]


def register(name: str, command: Callable[..., Any]) -> None:
    app.command(name)(handle_errors(command))


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
    register("monitor", monitor_command)
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


def main() -> None:
    raise_on_sigterm()
    app()
