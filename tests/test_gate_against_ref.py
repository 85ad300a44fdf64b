"""`attnprof check --against-ref REF` on a real git repository of two commits: the ref's code is
profiled from a temporary worktree beside this checkout (uncommitted changes on the current
side), from a subdirectory, and the worktree is gone afterwards however the check ended."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.gate.records import CheckResult
from attnprof.gate.refs import ref_checkout
from attnprof.store import read_record
from tests.model_sources import slowable_model

# Timing gated with a margin no load eats: these tests are about what is compared, not speed.
PYPROJECT = "[tool.attnprof]\nthresholds = ['step:median:100%', 'memory:0%']\n[tool.attnprof.settings]\nrepeats = 6\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def worktrees(repo: Path) -> int:
    return git(repo, "worktree", "list", "--porcelain").count("worktree ")


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository: commit 1 the model, commit 2 the model with 3 extra products in `first`;
    the working directory is its subdirectory pkg/."""
    root = tmp_path / "repo"
    (root / "pkg" / "models").mkdir(parents=True)
    git(root, "init", "--quiet")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "user.name", "test")
    (root / "pyproject.toml").write_text(PYPROJECT)
    model = root / "pkg" / "models" / "model.py"
    model.write_text(slowable_model("0"))
    git(root, "add", ".")
    git(root, "commit", "--quiet", "-m", "the model")
    model.write_text(slowable_model("3"))
    git(root, "commit", "--quiet", "-am", "extra work in first")
    monkeypatch.chdir(root / "pkg")
    monkeypatch.setenv("NO_COLOR", "1")
    for name in ("ATTNPROF_BASELINE", "ATTNPROF_THRESHOLDS", "ATTNPROF_REPEATS"):
        monkeypatch.delenv(name, raising=False)
    return root


@pytest.mark.slow
@pytest.mark.timeout(900)  # two interleaved checks of four worker processes each: minutes under load
def test_against_ref_judges_the_working_tree_against_the_ref(repo: Path) -> None:
    runner = CliRunner()
    # HEAD~1 has no extra products, the working tree (HEAD) three: their FLOPs differ in `first` alone.
    slower = runner.invoke(app, ["check", "models/model.py", "--against-ref", "HEAD~1", "--result", "r.json"])
    assert slower.exit_code == 1, slower.output
    result = read_record(repo / "pkg" / "r.json", CheckResult)
    assert result.baseline.startswith("HEAD~1 (") and "interleaved" in result.baseline
    changed = {m.layer for m in result.failures() if m.kind == "exact" and m.layer is not None}
    assert changed == {"first"}, changed
    assert worktrees(repo) == 1  # the temporary worktree is gone

    # An uncommitted change is the current side: back to no extra products, against HEAD's three.
    (repo / "pkg" / "models" / "model.py").write_text(slowable_model("0"))
    faster = runner.invoke(app, ["check", "models/model.py", "--against-ref", "HEAD", "--result", "r.json"])
    assert faster.exit_code == 1, faster.output  # exact metrics gate both ways: re-record when intended
    flops = next(m for m in read_record(repo / "pkg" / "r.json", CheckResult).metrics if m.metric == "flops")
    assert flops.status == "changed" and flops.current < flops.baseline  # fewer FLOPs here than at HEAD
    assert worktrees(repo) == 1

    # Unchanged code against its own commit passes.
    git(repo, "checkout", "--quiet", "--", ".")
    same = runner.invoke(app, ["check", "models/model.py", "--against-ref", "HEAD", "--result", "r.json"])
    assert same.exit_code == 0, same.output
    unchanged = read_record(repo / "pkg" / "r.json", CheckResult)
    assert unchanged.failures() == [] and all(m.status == "pass" for m in unchanged.metrics if m.kind == "exact")
    assert worktrees(repo) == 1


def test_against_ref_outside_a_repository_or_with_an_unknown_ref_is_exit_2(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["check", "models/model.py", "--against-ref", "no-such-branch"])
    assert unknown.exit_code == 2
    assert "unknown git ref 'no-such-branch'" in unknown.stderr and "Traceback" not in unknown.output
    assert len(unknown.stderr.strip().splitlines()) == 1
    option_like = runner.invoke(app, ["check", "models/model.py", "--against-ref=--output=x"])
    assert option_like.exit_code == 2 and "is not a git ref" in option_like.stderr

    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    (outside / "model.py").write_text(slowable_model("0"))
    monkeypatch.chdir(outside)
    result = runner.invoke(app, ["check", "model.py", "--against-ref", "HEAD"])
    assert result.exit_code == 2 and "is not inside a git repository" in result.stderr
    both = runner.invoke(app, ["check", "model.py", "--against-ref", "HEAD", "--against", "model.py"])
    assert both.exit_code == 2 and "give one" in both.stderr


def test_the_worktree_is_removed_when_the_check_is_interrupted(repo: Path) -> None:
    with pytest.raises(KeyboardInterrupt), ref_checkout("HEAD~1") as checkout:
        assert (checkout.tree / "pkg" / "models" / "model.py").read_text() == slowable_model("0")
        assert checkout.working_directory() == checkout.tree / "pkg"  # the same subdirectory
        assert worktrees(repo) == 2
        raise KeyboardInterrupt
    assert not checkout.tree.exists() and not checkout.tree.parent.exists()
    assert worktrees(repo) == 1
    assert git(repo, "status", "--porcelain") == ""  # the user's checkout untouched


def test_a_target_missing_at_the_ref_is_a_clear_error(repo: Path) -> None:
    (repo / "pkg" / "models" / "new.py").write_text(slowable_model("0"))
    result = CliRunner().invoke(app, ["check", "models/new.py", "--against-ref", "HEAD", "--result", "r.json"])
    assert result.exit_code == 2 and "models/new.py does not exist at HEAD" in result.stderr
    assert read_record(repo / "pkg" / "r.json", CheckResult).verdict == "error"
    assert worktrees(repo) == 1
