"""A git ref of the user's repository checked out beside it, for `check --against-ref REF`.

`ref_checkout(REF)` adds a temporary, detached worktree of REF (outside the repository, so the
user's checkout is not touched and uncommitted changes stay on the current side) and removes it
on the way out whatever happens, Ctrl-C included. `RefCheckout.side(target)` says how to run a
target string there: the same relative path or module, from the same subdirectory, with the
repository's folders on sys.path swapped for their copies in the worktree.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from attnprof.errors import EnvironmentUnsupported, UsageError
from attnprof.store import ScratchFolder

GIT_TIMEOUT_S = 300.0


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise EnvironmentUnsupported("--against-ref needs git, which is not installed here") from None


def _first_line(process: subprocess.CompletedProcess[str]) -> str:
    return next((line.strip() for line in process.stderr.splitlines() if line.strip()), "")


@dataclass(frozen=True)
class RefCheckout:
    """REF checked out at `tree`; `repo` is the repository's top folder, `commit` REF's commit."""

    ref: str
    commit: str
    repo: Path
    tree: Path

    def moved(self, path: Path) -> Path:
        """`path` inside the repository -> the same path in the checkout (others unchanged)."""
        if self._inside(path):
            return self.tree / path.resolve().relative_to(self.repo)
        return path

    def working_directory(self) -> Path:
        return self.moved(Path.cwd())

    def python_path(self) -> list[str]:
        """The copies of the folders on sys.path that lie inside the repository, so that the
        ref's modules are the ones imported there."""
        inside = [self.moved(Path(p or ".")) for p in sys.path if self._inside(Path(p or "."))]
        return [str(p) for p in dict.fromkeys(inside) if p.exists()]  # not what git does not track

    def target(self, target: str) -> str:
        """A target string as it reads from the checkout: an absolute path inside the repository
        moves there; relative paths and module names need no change (the worker runs from the
        same subdirectory of the checkout, with its folders first on sys.path)."""
        path_text, colon, factory = target.partition(":")
        if path_text.endswith(".py") and Path(path_text).is_absolute():
            return str(self.moved(Path(path_text))) + colon + factory
        return target

    def _inside(self, path: Path) -> bool:
        resolved = path.resolve()
        return resolved == self.repo or self.repo in resolved.parents


def resolve_ref(ref: str, start: Path | None = None) -> tuple[Path, str]:
    """(the repository's top folder, REF's commit); UsageError (exit 2) outside a repository or
    for a ref git does not know."""
    start = start or Path.cwd()
    top = _git(["rev-parse", "--show-toplevel"], start)
    if top.returncode != 0:
        raise UsageError(f"--against-ref {ref}: {start} is not inside a git repository")
    repo = Path(top.stdout.strip()).resolve()
    if not ref or ref.startswith("-"):
        raise UsageError(f"--against-ref: {ref!r} is not a git ref")
    commit = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], repo)
    if commit.returncode != 0:
        raise UsageError(f"--against-ref: unknown git ref {ref!r} in {repo} (fetch it first, e.g. git fetch origin)")
    return repo, commit.stdout.strip()


@contextlib.contextmanager
def ref_checkout(ref: str, start: Path | None = None) -> Iterator[RefCheckout]:
    """A temporary detached worktree of REF, removed (and pruned from git's list) on exit."""
    repo, commit = resolve_ref(ref, start)
    scratch = ScratchFolder("ref")  # a worktree a killed check leaves is removed by the next check
    tree = scratch.path / "tree"
    try:
        added = _git(["worktree", "add", "--detach", "--quiet", str(tree), commit], repo)
        if added.returncode != 0:
            raise EnvironmentUnsupported(f"--against-ref {ref}: git worktree add failed: {_first_line(added)}")
        yield RefCheckout(ref, commit, repo, tree)
    finally:
        _remove(repo, tree, scratch)


def _remove(repo: Path, tree: Path, scratch: ScratchFolder) -> None:
    """Remove the worktree and its folder; tell git it is gone even if the folder went first.
    Runs while an interruption unwinds too, so it is quick and never raises."""
    if tree.exists():
        _git(["worktree", "remove", "--force", str(tree)], repo)
    scratch.cleanup()
    _git(["worktree", "prune"], repo)

