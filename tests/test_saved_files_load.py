"""Files written by attnprof before the reorganisation into packages still load and render.

tests/data/written_before_reorganisation/ holds one file of each kind, written by the commit
before the move (a profile, a compare result, a fitted cost model and its measurement store, a
tune plan, an apply report, a doctor report, a calibration). They are read here through the
public re-export `attnprof.records`, as other tools read them, and rendered by `attnprof report`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attnprof import load_plan, records
from attnprof.cli.app import app
from attnprof.store import read_jsonl_records, read_record

SAVED = Path(__file__).parent / "data" / "written_before_reorganisation"


def test_profile_loads_with_its_layers_and_attention():
    profile = read_record(SAVED / "profile.json", records.Profile)
    assert profile.settings.seq_len == 16
    assert profile.totals.attention_flops > 0
    assert any(layer.attention is not None for layer in profile.layers)
    assert profile.totals.reference_time_ms is not None


def test_plan_loads_through_the_public_api():
    plan = load_plan(SAVED / "plan.json")
    assert isinstance(plan, records.Plan)
    assert plan.budgets.memory_bytes == 2**30
    assert plan.workload.target == "zoo:decoder"


@pytest.mark.parametrize(
    ("name", "record_type"),
    [
        ("check.json", records.CheckResult),
        ("fit.json", records.CostModel),
        ("apply.json", records.ApplyReport),
        ("doctor.json", records.DoctorReport),
        ("calibration.json", records.Calibration),
    ],
)
def test_other_records_load(name, record_type):
    record = read_record(SAVED / name, record_type)
    assert isinstance(record, record_type)


def test_measurement_store_loads_every_line():
    measurements, notes = read_jsonl_records(SAVED / "measurements.jsonl", records.Measurement)
    lines = (SAVED / "measurements.jsonl").read_text().splitlines()
    assert len(measurements) == len(lines) and notes == []


@pytest.mark.parametrize("name", ["profile.json", "plan.json", "fit.json", "check.json"])
def test_report_renders_them(runner, name):
    result = runner.invoke(app, ["report", str(SAVED / name), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("#")  # a Markdown heading: the record was read and rendered
