"""Renderers are total: every record the loaders accept renders in every format, and every value
a loader must not accept is a corrupt file (exit 2), never a traceback further on.

Records come from the samples, mutated field by field (random JSON, edge values: 10**400,
5e-324, zeros, negatives), saved, loaded as `attnprof report` loads them, and rendered.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnprof.errors import EnvironmentUnsupported, InputFileError
from attnprof.report.adapter import ReportOptions
from attnprof.report.console import SafeConsole
from attnprof.report.formats import FORMATS
from attnprof.report.plots import Peaks
from attnprof.report.registry import load_report_record
from attnprof.store import to_json_dict
from tests.fuzzing import locations, mutations_of, replaced
from tests.samples import sample_check, sample_distributed, sample_fit, sample_plan, sample_profile

SAMPLES = {
    "profile": to_json_dict(sample_profile()) | {"schema_version": 1},
    "plan": to_json_dict(sample_plan()) | {"schema_version": 1},
    "fit": to_json_dict(sample_fit()) | {"schema_version": 1},
    "check": to_json_dict(sample_check()) | {"schema_version": 1},
    "distributed": to_json_dict(sample_distributed()) | {"schema_version": 1},
    "distributed pipeline": to_json_dict(sample_distributed(pipeline=True)) | {"schema_version": 1},
}
# Numbers at the edges of what a float holds, and the values renderers divide by or take logs of.
EDGE_NUMBERS: list[Any] = [10**400, -(10**400), 2**63, 2**63 - 1, 1e308, -1e308, 5e-324, 0, 0.0, -1, -1.5, 1e-300]
OPTIONS = (ReportOptions(), ReportOptions(peaks=Peaks(100.0, 1000.0, "given")))
TEXT_FORMATS = [name for name, output in FORMATS.items() if name != "parquet"]


def render_everything(path: Path, data: Any) -> None:
    """Load `data` as `attnprof report` does; when it loads, render it every way it can be."""
    path.write_text(json.dumps(data))
    try:
        adapter, record = load_report_record(path)
    except InputFileError as exc:
        assert "\n" not in str(exc)
        return
    for name in TEXT_FORMATS:
        output = FORMATS[name]
        if not output.supports(adapter):
            continue
        for options in OPTIONS:
            try:
                rendered = output.render(adapter, record, options)
            except EnvironmentUnsupported:  # an optional package this machine lacks
                continue
            assert isinstance(rendered, (str, bytes))
        if output.terminal is not None:
            SafeConsole(file=io.StringIO(), width=100).print(output.terminal(adapter, record))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rendering")


@pytest.mark.parametrize("kind", SAMPLES)
def test_the_samples_render_in_every_format(folder: Path, kind: str) -> None:
    render_everything(folder / f"{kind}.json", SAMPLES[kind])


@pytest.mark.parametrize("kind", SAMPLES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_records_render_or_are_refused(folder: Path, kind: str, data: st.DataObject) -> None:
    render_everything(folder / f"mutated-{kind}.json", data.draw(mutations_of(SAMPLES[kind])))


def _numeric_locations(record: Any) -> list[tuple]:
    """Every number's location, the first item of each list standing for the rest."""
    found = []
    for location in locations(record):
        if any(isinstance(key, int) and key > 0 for key in location):
            continue
        value = record
        for key in location:
            value = value[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(location)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("kind", SAMPLES)
@pytest.mark.parametrize("edge", EDGE_NUMBERS, ids=repr)
def test_every_number_at_every_edge_renders_or_is_refused(folder: Path, kind: str, edge: Any) -> None:
    record = SAMPLES[kind]
    for location in _numeric_locations(record):
        render_everything(folder / f"edge-{kind}.json", replaced(record, location, edge))


@pytest.mark.parametrize(
    ("kind", "location", "value"),
    [
        ("profile", ("totals", "flops"), 10**400),
        ("plan", ("budgets", "memory_bytes"), 10**400),
        ("check", ("drift_factor",), 0),
        ("fit", ("validation", "details", 0, "measured_ms"), 5e-324),
    ],
    ids=["profile-flops-10e400", "plan-memory-budget-10e400", "check-drift-factor-0", "fit-subnormal-on-log-axis"],
)
def test_values_that_crashed_the_renderers(folder: Path, kind: str, location: tuple, value: Any) -> None:
    record = SAMPLES[kind]
    parent = record
    for key in location[:-1]:
        parent = parent[key]
    assert location[-1] in parent or isinstance(parent, list), f"{kind} has no field {location}"
    render_everything(folder / f"case-{kind}.json", replaced(record, location, value))


def test_a_size_beyond_64_bits_is_a_corrupt_file(folder: Path) -> None:
    path = folder / "huge.json"
    path.write_text(json.dumps(replaced(SAMPLES["profile"], ("totals", "flops"), 10**400)))
    with pytest.raises(InputFileError, match="out of range"):
        load_report_record(path)
