"""Every output format of `attnprof report` renders every record type."""

from __future__ import annotations

import io
import itertools
import json
import re

import pandas as pd
import pytest
from rich.console import Console

from attnprof.errors import EnvironmentUnsupported, InputFileError, UsageError
from attnprof.measure.records import DevicePeak
from attnprof.report import formats
from attnprof.report.adapter import ReportOptions, Section, format_cell
from attnprof.report.html import render_html
from attnprof.report.plots import Peaks
from attnprof.report.registry import ADAPTERS, adapter_for_record, load_report_record
from attnprof.report.svg import count_marks
from attnprof.store import to_json_dict, write_record
from tests.samples import SAMPLES, sample_profile

KINDS = [adapter.kind for adapter in ADAPTERS]
OPTIONS = ReportOptions(peaks=Peaks(tflops=1.0, bandwidth_gbs=50.0, source="test"))
EXTERNAL = re.compile(r"https?://|//cdn|\bsrc=|@import|url\((?!#)", re.IGNORECASE)


def test_every_adapter_has_a_sample() -> None:
    assert set(KINDS) == set(SAMPLES)


@pytest.mark.parametrize("kind", KINDS)
def test_saved_record_is_recognised_and_read_back(kind: str, tmp_path) -> None:
    record = SAMPLES[kind]()
    path = tmp_path / f"{kind}.json"
    write_record(path, record)
    adapter, loaded = load_report_record(path)
    assert adapter.kind == kind
    assert to_json_dict(loaded) == to_json_dict(record)


@pytest.mark.parametrize("kind", KINDS)
def test_text_formats(kind: str) -> None:
    record = SAMPLES[kind]()
    adapter = adapter_for_record(record)
    main = adapter.sections(record)[0].frame

    markdown = formats.FORMATS["markdown"].render(adapter, record, OPTIONS)
    if "markdown" in adapter.renderings:  # the record's own markdown (e.g. a CI step summary)
        assert markdown == adapter.renderings["markdown"](record) and "|" in markdown
    else:  # the summary, then every table with a header, a rule and one line per row
        assert markdown.startswith("# ")
        table_lines = [line for line in markdown.splitlines() if line.startswith("| ")]
        header_and_rule = 2 * len(adapter.sections(record))
        assert len(table_lines) == header_and_rule + sum(len(s.frame) for s in adapter.sections(record))

    assert json.loads(formats.FORMATS["json"].render(adapter, record, OPTIONS)) == to_json_dict(record)

    csv = pd.read_csv(io.StringIO(formats.FORMATS["csv"].render(adapter, record, OPTIONS)))
    assert list(csv.columns) == list(main.columns) and len(csv) == len(main)

    html = formats.FORMATS["html"].render(adapter, record, OPTIONS)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")


@pytest.mark.parametrize("kind", KINDS)
def test_parquet_round_trips_the_main_table(kind: str) -> None:
    pytest.importorskip("pyarrow")
    record = SAMPLES[kind]()
    adapter = adapter_for_record(record)
    data = formats.FORMATS["parquet"].render(adapter, record, OPTIONS)
    assert data[:4] == b"PAR1"
    back = pd.read_parquet(io.BytesIO(data))
    main = adapter.sections(record)[0].frame
    assert list(back.columns) == list(main.columns) and len(back) == len(main)


def test_parquet_without_pyarrow_is_an_environment_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    record = sample_profile()
    with pytest.raises(EnvironmentUnsupported, match=r"pip install 'attnprof\[parquet\]'") as info:
        formats.FORMATS["parquet"].render(adapter_for_record(record), record, OPTIONS)
    assert info.value.exit_code == 4


@pytest.mark.parametrize("kind", KINDS)
def test_terminal_table(kind: str) -> None:
    record = SAMPLES[kind]()
    adapter = adapter_for_record(record)
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(formats.render_table(adapter, record))
    text = out.getvalue()
    if adapter.terminal is None:  # the generic view: every table under its title
        for section in adapter.sections(record):
            assert section.title in text
    else:  # the record's own view (the same one its command prints)
        assert len(text.splitlines()) > 3
    assert "\x1b[" not in text  # no colour codes when not writing to a terminal


@pytest.mark.parametrize("kind", KINDS)
def test_html_is_self_contained_and_has_every_chart(kind: str) -> None:
    record = SAMPLES[kind]()
    adapter = adapter_for_record(record)
    html = render_html(record, OPTIONS)
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    charts = adapter.charts(record, OPTIONS)
    assert html.count("<figure") == len(charts) > 0
    for chart in charts:
        assert f'aria-label="{chart.title}"' in html or chart.title.replace("'", "&#x27;") in html


def test_profile_html_charts_and_their_marks() -> None:
    profile = sample_profile(blocks=3)
    html = render_html(profile, OPTIONS)
    figures = re.findall(r"<figure.*?</figure>", html, re.DOTALL)
    time_chart, roofline, memory = figures
    assert "Time per block" in time_chart and "Roofline" in roofline and "Memory per layer" in memory
    # 3 blocks with attention + the rest, and the time outside any block
    assert count_marks(time_chart, "attention") == 3 and count_marks(time_chart, "rest") == 4
    # every layer with FLOPs, bytes and its own time: 3 attention, 3 qkv, 3 MLP, lm_head
    assert count_marks(roofline) == 10 and count_marks(roofline, "attention") == 3
    assert "peak 1 TFLOP/s, 50 GB/s" in roofline
    # every layer with activation memory (the root module has none)
    assert count_marks(memory) == len(profile.layers) - 1
    # attention rows are highlighted in the layer table
    assert html.count('<tr class="highlight">') == 3


def test_profile_html_without_peaks_says_so() -> None:
    html = render_html(sample_profile())
    assert "ceilings not drawn: no peaks known for this device" in html


def test_unknown_record_file_is_a_clear_input_error(tmp_path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"schema_version": 1, "hello": 1}')
    with pytest.raises(InputFileError, match="not a record attnprof can report on"):
        load_report_record(path)


def test_format_cell() -> None:
    assert [format_cell(v) for v in (None, float("nan"), 1234567, 0.000123456, True, "x")] == [
        "—",
        "—",
        "1,234,567",
        "0.0001235",
        "yes",
        "x",
    ]


def test_roofline_uses_the_peak_recorded_in_the_profile() -> None:
    profile = sample_profile()
    profile.peak = DevicePeak("NVIDIA H100", "bf16", 989.0, 3350.0, "datasheet")
    html = render_html(profile)
    assert "peak 989 TFLOP/s, 3.35e+03 GB/s" in html and "datasheet, NVIDIA H100 bf16" in html
    profile.peak = DevicePeak("cpu", "fp32", None, None, None, "no peak known for cpu: run calibration")
    assert "ceilings not drawn: no peak known for cpu: run calibration" in render_html(profile)
    # peaks given explicitly win over the recorded ones
    assert "peak 1 TFLOP/s, 50 GB/s" in render_html(profile, OPTIONS)


def _as_pandas_reads(frame: pd.DataFrame) -> tuple[list[bool], list[list[str]]]:
    """Whether pandas calls each column numeric, and each cell as it reads from the frame."""
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns
    ]
    return numeric, [[format_cell(v.item() if hasattr(v, "item") else v) for v in row]
                     for row in frame.itertuples(index=False, name=None)]


def _as_section_reads(section: Section) -> tuple[list[bool], list[list[str]]]:
    numeric, rows = section.typed_columns()
    return numeric, [[format_cell(v) for v in row] for row in rows]


@pytest.mark.parametrize("kind", KINDS)
def test_tables_read_without_pandas_as_their_dataframe_does(kind: str) -> None:
    """The terminal, markdown and HTML views type columns without pandas: the same as the frame."""
    record = SAMPLES[kind]()
    for section in adapter_for_record(record).sections(record):
        assert _as_section_reads(section) == _as_pandas_reads(section.frame), section.title


def test_column_types_match_pandas_for_every_mix_of_values() -> None:
    """Gaps, ints with floats, bools, text, NaN and integers beyond 64 bits, up to three a column."""
    atoms = [None, 0, 12345, -7, 1.5, float("nan"), True, "x", 2**63, 2**64, -(2**63) - 1, 1e7]
    for size in range(4):
        for values in itertools.product(atoms, repeat=size):
            section = Section("t", ("c",), [{"c": v} for v in values])
            assert _as_section_reads(section) == _as_pandas_reads(section.frame), values


def test_a_row_must_have_exactly_the_declared_columns() -> None:
    with pytest.raises(ValueError, match=re.escape("missing {'b'}, extra {'c'}")):
        Section("t", ("a", "b"), [{"a": 1, "c": 2}])


@pytest.mark.parametrize("name", list(formats.FORMATS))
def test_every_format_renders_each_record_type_it_supports(name: str) -> None:
    output = formats.FORMATS[name]
    supported = [kind for kind in KINDS if output.supports(adapter_for_record(SAMPLES[kind]()))]
    assert supported, f"no record type has --format {name}"
    for kind in KINDS:
        record = SAMPLES[kind]()
        adapter = adapter_for_record(record)
        if kind in supported:
            data = output.render(adapter, record, OPTIONS)
            assert isinstance(data, bytes if output.binary else str) and len(data) > 0, kind
        else:
            with pytest.raises(UsageError, match=f"--format {name} is for a .* record, not a {kind} record"):
                output.render(adapter, record, OPTIONS)


def test_records_render_only_registered_formats() -> None:
    for adapter in ADAPTERS:
        assert set(adapter.renderings) <= set(formats.FORMATS), adapter.kind


def test_format_help_names_every_format() -> None:
    text = formats.formats_help()
    assert all(name in text for name in formats.FORMATS)
    assert text.endswith("for a check record also junit, benchmark-json.")
