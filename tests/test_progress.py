"""Progress bars: drawn on a terminal only, no-ops otherwise, nested bars share one display."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from attnprof.report import console, progress


def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Make stderr a 100-column terminal that writes into a buffer."""
    buffer = io.StringIO()
    fake = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(console, "stderr_console", lambda: fake)
    return buffer


def test_not_a_terminal_draws_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress.progress("measuring", total=3) as bar:
        assert not bar.shown
        for _ in range(3):
            bar.advance()
        bar.describe("still nothing")
    assert list(progress.track([1, 2, 3], "items")) == [1, 2, 3]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_terminal_shows_counts_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = terminal(monkeypatch)
    with progress.progress("measuring configs", total=4) as bar:
        assert bar.shown
        bar.advance(2)
        progress._live.refresh()  # type: ignore[union-attr]
        screen = buffer.getvalue()
    assert "measuring configs" in screen and "2/4" in screen and "left" in screen
    assert progress._live is None


def test_quiet_hides_bars_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = terminal(monkeypatch)
    monkeypatch.setattr(console, "is_quiet", lambda: True)
    with progress.progress("measuring", total=2) as bar:
        assert not bar.shown
        bar.advance()
    assert buffer.getvalue() == ""


def test_nested_progress_adds_a_line_to_the_bar_on_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = terminal(monkeypatch)
    with progress.progress("tune", total=2) as outer:
        for step in progress.track(range(3), "repeats"):
            assert progress._live is not None and len(progress._live.tasks) == 2
            if step == 2:
                progress._live.refresh()
        assert len(progress._live.tasks) == 1  # the inner line is gone once its loop ends
        outer.advance()
    assert "repeats" in buffer.getvalue() and "tune" in buffer.getvalue()


def test_track_takes_the_total_from_the_items(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal(monkeypatch)
    seen = []
    for item in progress.track(["a", "b"], "letters"):
        seen.append((item, progress._live.tasks[0].total))  # type: ignore[union-attr]
    assert seen == [("a", 2), ("b", 2)]


def test_a_failing_loop_closes_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal(monkeypatch)
    with pytest.raises(RuntimeError), progress.progress("measuring", total=3):
        raise RuntimeError("model failed")
    assert progress._live is None


def test_update_jumps_to_a_reported_position(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal(monkeypatch)
    with progress.progress("sweep", total=None) as bar:
        bar.update(3, 7)
        task = progress._live.tasks[0]  # type: ignore[union-attr]
        assert (task.completed, task.total) == (3, 7)


def test_the_measuring_loops_hook_draws_the_same_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnprof.profiling import progress as hook

    monkeypatch.setattr(hook, "_tracker", None)
    hook.install_tracker(progress.track)  # as the CLI does before a command runs
    terminal(monkeypatch)
    seen = []
    for item in hook.track(["a", "b"], "timing repeats"):
        seen.append((item, progress._live.tasks[0].description))  # type: ignore[union-attr]
    assert seen == [("a", "timing repeats"), ("b", "timing repeats")]
    assert progress._live is None


def _hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The measuring loops' hooks as the CLI installs them (restored after the test)."""
    from attnprof.profiling import progress as hook

    for name in ("_tracker", "_stages", "_spinner"):
        monkeypatch.setattr(hook, name, None)
    hook.install_tracker(progress.track, progress.progress, progress.spinning)


def test_a_spinning_line_moves_while_its_block_runs_and_its_thread_ends_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    buffer = terminal(monkeypatch)
    with progress.spinning("counting operations"):
        assert any(t.name == "attnprof-spinner" for t in threading.enumerate())
        assert progress._live is not None and progress._live.tasks[0].total is None
        progress._live.refresh()
    assert not any(t.name == "attnprof-spinner" for t in threading.enumerate())
    assert "counting operations" in buffer.getvalue() and progress._live is None


def test_tune_shows_its_stages_the_probes_and_the_rounds_with_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnprof.settings import resolve_settings
    from attnprof.targets.load import load_workload
    from attnprof.tuning.budget import parse_budget
    from attnprof.tuning.loop import TuneRequest, tune

    _hooks(monkeypatch)
    buffer = terminal(monkeypatch)
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(
        workload, {"batch_size": 2, "seq_len": 8, "repeats": 2, "warmup": 1, "threads": 1, "backend": "flash"}
    )
    # For throughput every ranked candidate is measured (none is left out as sure to lose), and of
    # the top two at least one changes something.
    tune(workload, settings, TuneRequest(parse_budget([]), "throughput", ["backend"], top_k=2, verify_seconds=1.0))
    screen = buffer.getvalue()
    for stage in ("tune: screening the space", "probe 1/", "tune: measuring candidate 1/", "tune: comparing",
                  "candidate(s), round 1", "building the model, counting operations", "left"):
        assert stage in screen, stage
    assert progress._live is None


def test_fit_names_each_configuration_as_it_starts_and_the_fitting_stage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from attnprof.cli.app import app

    _hooks(monkeypatch)
    buffer = terminal(monkeypatch)
    monkeypatch.chdir(tmp_path)
    small = ["--batch-size", "1:2", "--seq-len", "8", "--dtype", "fp32", "--backend", "math", "--threads", "1",
             "--repeats", "2", "--warmup", "1", "-n", "2"]
    result = CliRunner().invoke(app, ["fit", "zoo:decoder", *small])
    # Two points cannot be cross-validated: the fit is saved but refused (exit 1); its progress is what counts here.
    assert result.exit_code == 1, result.output
    screen = buffer.getvalue()
    assert "measuring 1/2: batch 1 seq 8 fp32 math" in screen and "measuring 2/2: batch 2" in screen
    assert "fitting the cost model on 2 measurement(s)" in screen and "left" in screen
