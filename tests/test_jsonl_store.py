"""The JSON Lines store: durable appends, torn last lines, locked concurrent writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnprof.errors import InputFileError
from attnprof.settings import Settings
from attnprof.store import SCHEMA_VERSION, append_jsonl, append_line, read_jsonl, read_jsonl_records

REPO = Path(__file__).resolve().parents[1]


def test_appended_records_read_back_in_order(tmp_path: Path) -> None:
    store = tmp_path / "deep" / "m.jsonl"
    assert read_jsonl(store).records == []  # a store not yet written is empty
    append_jsonl(store, Settings(batch_size=2))
    append_jsonl(store, {"point": "b", "latency_ms": 1.5})
    loaded = read_jsonl(store)
    assert loaded.notes == []
    assert loaded.records[1] == {"point": "b", "latency_ms": 1.5, "schema_version": SCHEMA_VERSION}
    assert store.read_text().count("\n") == 2


def test_typed_read(tmp_path: Path) -> None:
    store = tmp_path / "s.jsonl"
    for n in (1, 2):
        append_jsonl(store, Settings(seq_len=n))
    records, notes = read_jsonl_records(store, Settings)
    assert [r.seq_len for r in records] == [1, 2] and notes == []


def test_torn_last_line_is_skipped_reported_and_cut_by_next_writer(tmp_path: Path) -> None:
    store = tmp_path / "m.jsonl"
    append_jsonl(store, {"n": 1})
    with store.open("ab") as handle:
        handle.write(b'{"n": 2, "schema_ver')  # a writer killed mid-append
    loaded = read_jsonl(store)
    assert [r["n"] for r in loaded.records] == [1]
    assert len(loaded.notes) == 1 and "torn last line" in loaded.notes[0]
    append_jsonl(store, {"n": 3})
    loaded = read_jsonl(store)
    assert [r["n"] for r in loaded.records] == [1, 3] and loaded.notes == []


def test_complete_json_without_newline_counts_as_torn(tmp_path: Path) -> None:
    # The append was cut between the object and its newline: it never completed.
    store = tmp_path / "m.jsonl"
    store.write_bytes(b'{"schema_version": 1, "n": 1}')
    assert read_jsonl(store).records == []
    append_jsonl(store, {"n": 2})
    assert [r["n"] for r in read_jsonl(store).records] == [2]


def test_bad_line_in_the_middle_is_a_corrupt_file(tmp_path: Path) -> None:
    store = tmp_path / "m.jsonl"
    append_jsonl(store, {"n": 1})
    with store.open("ab") as handle:
        handle.write(b"garbage\n")
    append_jsonl(store, {"n": 3})
    with pytest.raises(InputFileError, match=r"m\.jsonl:2: corrupt file"):
        read_jsonl(store)


def test_newer_line_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "m.jsonl"
    store.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(InputFileError, match="upgrade attnprof"):
        read_jsonl(store)


def test_non_finite_values_are_written_as_null(tmp_path: Path) -> None:
    # JSON has no NaN: an unknown figure is null, never a token other readers choke on.
    store = tmp_path / "m.jsonl"
    append_jsonl(store, {"latency_ms": float("nan"), "memory": float("inf")})
    assert b"NaN" not in store.read_bytes() and b"Infinity" not in store.read_bytes()
    assert read_jsonl(store).records[0]["latency_ms"] is None


def test_append_line_refuses_text_with_a_newline(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="single line"):
        append_line(tmp_path / "m.jsonl", '{"a": 1}\n{"b": 2}')
    assert not (tmp_path / "m.jsonl").exists()
