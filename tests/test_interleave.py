"""Interleaved profiling (attnprof.profiling.interleave) and `attnprof check --against`, with real workers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.errors import UsageError, UserCodeError
from attnprof.gate.records import CheckResult
from attnprof.profiling.interleave import TURN_SECONDS, Side, Turns, profile_interleaved
from attnprof.settings import Settings
from attnprof.store import read_record

DEMO_MODEL = Path(__file__).parents[1] / "examples" / "check_demo_model.py"
SETTINGS = Settings(batch_size=2, seq_len=16, repeats=6, warmup=1, threads=1, clock="cpu", reference_probe=True)


@pytest.fixture
def pipes() -> Iterator[tuple[int, int, int, int]]:
    """(grant_read, grant_write, report_read, report_write)"""
    grant_read, grant_write = os.pipe()
    report_read, report_write = os.pipe()
    yield grant_read, grant_write, report_read, report_write
    for fd in (grant_read, grant_write, report_read, report_write):
        os.close(fd)


def test_a_worker_waits_for_each_turn_and_keeps_it_for_a_while(
    pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    grant_read, grant_write, report_read, report_write = pipes
    now = [100.0]
    monkeypatch.setattr("attnprof.profiling.interleave.time.perf_counter", lambda: now[0])
    turns = Turns(grant_read, report_write)

    os.write(grant_write, b"g")
    turns.pace(False)  # the first repeat: report waiting, take the granted turn
    assert os.read(report_read, 8) == b"w"
    now[0] += TURN_SECONDS / 2
    turns.pace(False)  # within the turn: no report, no wait
    now[0] += TURN_SECONDS
    os.write(grant_write, b"g")
    turns.pace(False)  # the turn is over: wait for the next
    os.write(grant_write, b"g")
    turns.pace(True)  # timing done: say so, wait to be released
    assert os.read(report_read, 8) == b"wf"


def test_a_worker_whose_parent_went_away_stops(pipes: tuple[int, int, int, int]) -> None:
    _, _, report_read, report_write = pipes
    orphan_read, parent_write = os.pipe()
    os.close(parent_write)  # the parent's end is gone: the worker's read gets end of file
    try:
        with pytest.raises(UsageError, match="went away"):
            Turns(orphan_read, report_write).pace(False)
    finally:
        os.close(orphan_read)
    assert os.read(report_read, 8) == b"w"


@pytest.mark.slow
def test_profiles_each_side_in_its_own_worker_in_order() -> None:
    plain, slowed = profile_interleaved(
        [Side(str(DEMO_MODEL), {"DEMO_EXTRA_MATMULS": "0"}), Side(str(DEMO_MODEL), {"DEMO_EXTRA_MATMULS": "5"})],
        SETTINGS,
    )
    for profile in (plain, slowed):
        assert profile.settings == SETTINGS
        assert profile.totals.time_ms is not None and len(profile.totals.time_ms.samples) == SETTINGS.repeats
        assert profile.totals.reference_time_ms is not None
        assert len(profile.totals.reference_time_ms.samples) == SETTINGS.repeats
        assert any("interleaved" in note for note in profile.notes)
    # The environment reached only its own side: 5 products of (2*16) x 128 by 128 x 128.
    assert slowed.totals.flops - plain.totals.flops == 5 * 2 * (2 * 16) * 128 * 128


@pytest.mark.slow
def test_a_failing_side_is_named_and_the_other_does_not_hang(tmp_path: Path) -> None:
    broken = tmp_path / "broken_model.py"
    broken.write_text(
        "import torch\n"
        "def build_model(device, dtype):\n"
        "    raise RuntimeError('this model does not build')\n"
        "def example_inputs(batch_size, seq_len, device, dtype):\n"
        "    return (torch.zeros(batch_size, seq_len),)\n"
    )
    with pytest.raises(UserCodeError, match=r"broken_model\.py.*this model does not build"):
        profile_interleaved([Side(str(DEMO_MODEL)), Side(str(broken))], dataclasses.replace(SETTINGS, repeats=3))


def test_interleaving_needs_two_sides() -> None:
    with pytest.raises(UsageError, match="at least two"):
        profile_interleaved([Side(str(DEMO_MODEL))], SETTINGS)


@pytest.fixture
def checkouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Two checkouts of the demo: base/ as it is, new/ with its knob's default turned up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.delenv("DEMO_EXTRA_MATMULS", raising=False)
    (tmp_path / "pyproject.toml").write_text(
        "[tool.attnprof]\nthresholds = ['median:150%', 'memory:0%']\n"
        "[tool.attnprof.settings]\nthreads = 1\nrepeats = 8\nwarmup = 1\nclock = 'cpu'\n"
    )
    source = DEMO_MODEL.read_text()
    base, new = tmp_path / "base" / DEMO_MODEL.name, tmp_path / "new" / DEMO_MODEL.name
    slowed = source.replace('"DEMO_EXTRA_MATMULS", "0"', '"DEMO_EXTRA_MATMULS", "100"')
    for path, text in ((base, source), (new, slowed)):
        path.parent.mkdir()
        path.write_text(text)
    return base, new


@pytest.mark.slow
def test_check_against_the_base_checkout_names_the_slowed_layer(
    checkouts: tuple[Path, Path], tmp_path: Path
) -> None:
    base, new = checkouts
    runner = CliRunner()
    same = runner.invoke(app, ["check", str(base), "--against", str(base), "--result", "same.json"])
    assert same.exit_code == 0, same.output
    assert read_record(tmp_path / "same.json", CheckResult).failures() == []

    slowed = runner.invoke(app, ["check", str(new), "--against", str(base), "--result", "slowed.json"])
    assert slowed.exit_code == 1, slowed.output
    result = read_record(tmp_path / "slowed.json", CheckResult)
    assert result.baseline == f"{base} (interleaved)"
    rows = {(m.metric, m.statistic): m for m in result.metrics}
    assert rows[("layers.layers.1.attn.flops", "exact")].status == "changed"
    assert rows[("layers.layers.0.attn.flops", "exact")].status == "pass"


def test_check_against_refuses_bad_input(checkouts: tuple[Path, Path]) -> None:
    base, new = checkouts
    runner = CliRunner()
    combined = runner.invoke(app, ["check", str(new), "--against", str(base), "--update-baseline"])
    assert combined.exit_code == 2 and "does not combine with --against" in combined.stderr
    missing = runner.invoke(app, ["check", str(new), "--against", "nowhere/model.py"])
    assert missing.exit_code == 2 and "nowhere/model.py" in missing.stderr
    assert "Traceback" not in missing.output
