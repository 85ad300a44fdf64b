"""The JSON Lines store: durable appends, torn last lines, locked concurrent writers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnprof.errors import InputFileError
from attnprof.records import SCHEMA_VERSION, Settings
from attnprof.store import append_jsonl, append_line, read_json, read_jsonl, read_jsonl_records

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


# A writer that appends numbered records and rewrites two JSON files, printing each record
# number once its append has returned (that is, once the record is complete and durable).
WRITER = r"""
import json, sys
from pathlib import Path
from attnprof.store import append_jsonl, atomic_write_text, write_new_record
folder, name, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
for n in range(start, start + 100_000):
    append_jsonl(folder / "m.jsonl", {"writer": name, "n": n, "pad": "x" * (n % 200)})
    print(n, flush=True)
    text = json.dumps({"schema_version": 1, "writer": name, "n": n, "pad": "y" * (n % 300)})
    atomic_write_text(folder / f"state-{n % 2}.json", text)
    if n % 5 == 0:
        write_new_record(folder / "snap.json", {"writer": name, "n": n})
"""


def _start_writer(folder: Path, name: str, start: int, count: int | None = None) -> subprocess.Popen[str]:
    code = WRITER if count is None else WRITER.replace("start + 100_000", f"start + {count}")
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(folder), name, str(start)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def _load_everything(folder: Path) -> list[dict]:
    """Every file a reader would open: all must load; returns the store's records."""
    for path in folder.glob("*.json"):
        read_json(path)
    return read_jsonl(folder / "m.jsonl").records


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_corrupts_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261121)
    acknowledged: list[int] = []
    next_n = 0
    for _ in range(60):
        writer = _start_writer(tmp_path, "w", next_n)
        time.sleep(rng.uniform(0.0, 0.04))
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate()
        assert writer.returncode == -signal.SIGKILL
        acknowledged += [int(line) for line in out.split()]
        records = _load_everything(tmp_path)
        stored = [r["n"] for r in records]
        assert len(stored) == len(set(stored)), "a record was stored twice"
        assert set(acknowledged) <= set(stored), "a completed record was lost"
        next_n = max(stored, default=-1) + 1
    assert len(acknowledged) > 60  # the writer did get work done between kills
    # Temporary files of killed writers may remain; no reader ever opens them.
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.endswith((".json", ".jsonl"))]
    assert all(name.endswith(".tmp") for name in leftovers)


def test_two_processes_appending_to_one_store_lose_nothing(tmp_path: Path) -> None:
    writers = [_start_writer(tmp_path, name, 0, count=150) for name in ("a", "b")]
    for writer in writers:
        writer.communicate()
        assert writer.returncode == 0
    records = _load_everything(tmp_path)
    for name in ("a", "b"):
        assert sorted(r["n"] for r in records if r["writer"] == name) == list(range(150))
    # 30 snapshots each under one name: nobody overwrote anybody.
    assert len(list(tmp_path.glob("snap*.json"))) == 60
    assert os.listdir(tmp_path).count("m.jsonl") == 1


def test_append_line_refuses_text_with_a_newline(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="single line"):
        append_line(tmp_path / "m.jsonl", '{"a": 1}\n{"b": 2}')
    assert not (tmp_path / "m.jsonl").exists()
