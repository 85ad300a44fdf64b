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
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

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
    """attnprof's command group: usage errors in one line, interrupts as quiet exits, help as
    its commands' (`_Command`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_command_help(self)

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_help_option(super().get_help_option(ctx))

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


class _Command(TyperCommand):
    """A command whose help reads as written: text in brackets ([tool.attnprof]) stays literal
    rather than being taken for rich markup, a flag shows no value placeholder, and defaults
    are shown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_command_help(self)

    def get_help_option(self, ctx: Any) -> Any:
        return _plain_help_option(super().get_help_option(ctx))


def _plain_command_help(command: Any) -> None:
    if command.help:  # paragraphs as flowing text: a docstring's line breaks are not the reader's
        command.help = escape("\n\n".join(" ".join(part.split()) for part in command.help.split("\n\n")))
    command.epilog = escape(command.epilog) if command.epilog else command.epilog
    for param in command.params:
        _plain_help(param)


def _plain_help_option(option: Any) -> Any:
    if option is not None:
        _plain_help(option)
    return option


def _plain_help(param: Any) -> None:
    """An option's help escaped, and the placeholder of its value as a person reads it."""
    if getattr(param, "help", None):
        param.help = escape(param.help)
    if param.metavar is None and getattr(param, "is_flag", False):
        param.metavar = ""  # a flag takes no value
    elif param.metavar is None and getattr(param, "multiple", False):
        param.metavar = "<str>..."  # given once per value: --threshold A --threshold B


app = typer.Typer(
    name="attnprof",
    cls=_Commands,
    epilog="Examples:\n  attnprof profile hf:llama   # per-layer time, FLOPs and memory of a small Llama\n"
    "  attnprof tune --help        # each command's --help has its own examples",
    help="Profile and tune attention workloads in PyTorch.\n\nA run setting left off the command line comes from "
    "its ATTNPROF_* variable, else [tool.attnprof] in pyproject.toml, else the model's ATTNPROF defaults, else "
    "the built-in default each --help names.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"show_default": True},
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
    verbose: bool = typer.Option(
        False, "--verbose", "-v",
        help="More detail: what was done, on stderr; the tables' detail columns (p10–p90, TFLOP/s, % of peak, bound).",
    ),
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


def register(name: str, command: Callable[..., Any], examples: tuple[str, ...], owns_stdout: bool = True) -> None:
    """The command, its help ending with `examples` (command lines, each with what it does after #)."""
    epilog = "Examples:\n" + "\n".join(f"  {example}" for example in examples)
    app.command(name, cls=_Command, epilog=epilog)(handle_errors(command, owns_stdout))


def _register_commands() -> None:
    # Imported here so that `attnprof --help` lists every command and each module stays free of app.py.
    from attnprof.cli.apply import apply_command
    from attnprof.cli.doctor import doctor_command
    from attnprof.cli.fit import fit_command
    from attnprof.cli.monitor import monitor_command
    from attnprof.cli.predict import predict_command
    from attnprof.cli.profile import profile_command
    from attnprof.cli.report import report_command
    from attnprof.cli.schema import schema_command
    from attnprof.cli.tune import tune_command

    register("profile", profile_command, (
        "attnprof profile hf:llama --mode train       # a transformers model from a config, train step",
        "attnprof profile model.py --html report.html  # also a self-contained HTML report",
        "attnprof profile --json > profile.json        # the profile JSON, nothing else, on stdout",
    ))
    register("report", report_command, (
        "attnprof report FILE                          # a saved profile, plan, fit or check result",
        "attnprof report FILE -f html -o report.html   # also: markdown, json, csv, parquet",
    ))
    register("doctor", doctor_command, (
        "attnprof doctor                               # what this environment can do",
        "attnprof doctor --calibrate                   # measure this machine's peaks (for % of peak)",
    ))
    register("monitor", monitor_command, (  # the watched command keeps its stdout
        "attnprof monitor                              # live utilization, memory, power of every GPU",
        "attnprof monitor --record gpu.json -- python train.py",
    ), owns_stdout=False)
    register("tune", tune_command, (
        "attnprof tune model.py --budget memory=20GiB --budget latency=15ms",
        "attnprof tune zoo:decoder --knobs heads,kv_heads --max-quality-loss 1% --pareto",
    ))
    register("apply", apply_command, (
        "attnprof apply plan.json                      # the plan's own target; prints what changed",
        "attnprof apply plan.json model.py --verify --out report.json",
    ))
    register("fit", fit_command, (
        "attnprof fit zoo:decoder --threads 1          # sweep, fit, cross-validate a cost model",
    ))
    register("predict", predict_command, (
        "attnprof predict model.py --batch-size 16 --seq-len 8192",
    ))
    register("schema", schema_command, (
        "attnprof schema profile                       # the JSON Schema of saved profiles",
        "attnprof schema plan -o plan.schema.json      # also: check, fit, distributed",
    ))

    from attnprof.cli.baseline import baseline_command
    from attnprof.cli.check import check_command
    from attnprof.cli.compare import compare_command

    register("check", check_command, (
        "attnprof check model.py --baseline profiles/model.json  # exit 1 on a significant regression",
        "attnprof check model.py --against-ref origin/main       # against the model as origin/main has it",
    ))
    register("compare", compare_command, (
        "attnprof compare a.json b.json                # two saved profiles, no profiling",
    ))
    register("baseline", baseline_command, (
        "attnprof baseline model.py --out profiles/model.json   # record once, commit it",
    ))


_register_commands()


def main() -> int:
    """The command line (argv), once imported: its exit code. `attnprof.__main__` runs it with
    the interrupts of start-up and teardown handled too."""
    return typing.cast(int, app(standalone_mode=False))
