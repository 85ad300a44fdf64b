"""The progress hooks of the measuring loops: plain pass-throughs until a front end installs a bar.

Profiling sits below the renderers, so it cannot draw a bar itself: the CLI installs the rich bar
of `attnprof.report.progress` here before any command runs. Three hooks: `track` (a loop of
known length), `stages` (a long command's overall bar, advanced stage by stage, with the time
left), and `spinning` (work of unknown length between timed steps, such as building a model or
counting its operations, shown moving so the screen is never still for long).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
# (items, description, total) -> the items, with a bar advanced after each one
Tracker = Callable[[Iterable[Any], str, int | None], Iterator[Any]]


class StageBar(Protocol):
    """What a command does with its overall bar."""

    def advance(self, steps: float = 1) -> None: ...

    def describe(self, description: str) -> None: ...

    def update(self, completed: float, total: float | None) -> None: ...


Stages = Callable[[str, float | None], AbstractContextManager[StageBar]]
Spinner = Callable[[str], AbstractContextManager[None]]

_tracker: Tracker | None = None
_stages: Stages | None = None
_spinner: Spinner | None = None


class _NoBar:
    def advance(self, steps: float = 1) -> None:
        pass

    def describe(self, description: str) -> None:
        pass

    def update(self, completed: float, total: float | None) -> None:
        pass


def install_tracker(tracker: Tracker, stages: Stages | None = None, spinner: Spinner | None = None) -> None:
    global _tracker, _stages, _spinner
    _tracker, _stages, _spinner = tracker, stages, spinner


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items`, advancing the installed bar after each one (without one: just iterate)."""
    if _tracker is None:
        return iter(items)
    return _tracker(items, description, total)


def stages(description: str, total: float | None = None) -> AbstractContextManager[StageBar]:
    """A command's overall bar for the block (without a front end: one that does nothing)."""
    if _stages is None:
        return nullcontext(_NoBar())
    return _stages(description, total)


def spinning(description: str) -> AbstractContextManager[None]:
    """A moving line for the block's untimed work (without a front end: nothing)."""
    if _spinner is None:
        return nullcontext()
    return _spinner(description)
