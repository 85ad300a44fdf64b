"""The progress hook of the measuring loops: a plain pass-through until a front end installs a bar.

Profiling sits below the renderers, so it cannot draw a bar itself: the CLI installs the rich bar
of `attnprof.report.progress` here before any command runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
# (items, description, total) -> the items, with a bar advanced after each one
Tracker = Callable[[Iterable[Any], str, int | None], Iterator[Any]]

_tracker: Tracker | None = None


def install_tracker(tracker: Tracker) -> None:
    global _tracker
    _tracker = tracker


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items`, advancing the installed bar after each one (without one: just iterate)."""
    if _tracker is None:
        return iter(items)
    return _tracker(items, description, total)
