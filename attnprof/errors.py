"""attnprof's exceptions. Each carries the exit code the CLI returns for it (docs/architecture.md, "Exit codes")."""

from __future__ import annotations


class AttnprofError(Exception):
    """Base class: a failure attnprof understands and reports in one line."""

    exit_code: int = 2


class UsageError(AttnprofError):
    """A bad flag, target string, budget string or value (exit 2)."""

    exit_code = 2


class InputFileError(UsageError):
    """A file that is missing, corrupt, truncated or of an unknown schema version (exit 2)."""


class UserCodeError(AttnprofError):
    """An exception raised inside the user's model code (exit 3).

    `user_traceback` holds the user's frames only, formatted, so the CLI can show their
    traceback rather than attnprof's.
    """

    exit_code = 3

    def __init__(self, message: str, user_traceback: str = "") -> None:
        super().__init__(message)
        self.user_traceback = user_traceback


class EnvironmentUnsupported(AttnprofError):
    """The environment cannot do what was asked, e.g. `--device cuda` without a GPU (exit 4)."""

    exit_code = 4


class OutOfMemory(EnvironmentUnsupported):
    """The device ran out of memory for what was asked, e.g. too large a batch (exit 4)."""


class OutputFileError(EnvironmentUnsupported):
    """A file cannot be written: disk full, no permission, read-only folder (exit 4)."""


class MachineMismatch(EnvironmentUnsupported):
    """Two profiles come from different machines and the comparison was not allowed (exit 4)."""


class RegressionFound(AttnprofError):
    """`check` found a performance regression (exit 1)."""

    exit_code = 1


class PlanRejected(AttnprofError):
    """A plan's verification measurement contradicted its prediction (exit 1)."""

    exit_code = 1


class FitRejected(AttnprofError):
    """A fitted cost model whose own cross-validation says its predictions are unusable (exit 1)."""

    exit_code = 1


class NoFeasiblePlan(AttnprofError):
    """No plan satisfies the budget (exit 5)."""

    exit_code = 5


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that it unwinds like Ctrl-C (exit 143 = 128 + 15).

    A KeyboardInterrupt, not an AttnprofError: user code that catches Exception must not
    swallow it, and everything that cleans up after Ctrl-C cleans up after it too.
    """

    exit_code = 143


class NvmlError(EnvironmentUnsupported):
    """NVML (the NVIDIA driver's management library) is missing or refused a query (exit 4)."""
