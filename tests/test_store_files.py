"""Schema versions, corrupt files, migrations and no-clobber writes of attnprof's JSON files."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

from attnprof.errors import InputFileError, OutputFileError
from attnprof.settings import Settings
from attnprof.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    append_jsonl,
    atomic_write_text,
    migrate,
    read_json,
    read_record,
    write_new_record,
    write_record,
)


def test_record_round_trip_carries_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    write_record(path, Settings(batch_size=4))
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert read_record(path, Settings) == Settings(batch_size=4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"schema_version": 1, "mode": "inf', "corrupt file (invalid JSON at line 1)"),
        ("", "corrupt file (invalid JSON"),
        ("[1, 2]", "corrupt file (expected a JSON object)"),
        ('{"mode": "infer"}', "corrupt file (no integer schema_version)"),
        ('{"schema_version": "1"}', "corrupt file (no integer schema_version)"),
        ('{"schema_version": true}', "corrupt file (no integer schema_version)"),
        ('{"schema_version": 0}', "corrupt file (schema_version 0)"),
        ('{"schema_version": 1, "x": NaN}', "corrupt file (NaN is not valid JSON)"),
        ('{"schema_version": 1, "x": -Infinity}', "corrupt file (-Infinity is not valid JSON)"),
        ("[" * 100_000, "corrupt file (nested too deeply)"),
        ('{"schema_version": 1, "x": ' + "9" * 5000 + "}", "corrupt file (Exceeds the limit"),
    ],
)
def test_invalid_files_are_refused_as_corrupt(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputFileError, match="^" + re.escape(f"{path}: ")) as caught:
        read_json(path)
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_binary_garbage_is_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b"\x80\x81\xfe\xff")
    with pytest.raises(InputFileError, match=r"corrupt file \(not UTF-8 text\)"):
        read_json(path)


def test_truncated_profile_copy_is_refused(tmp_path: Path) -> None:
    # Every strict prefix of a valid file is either invalid JSON or lacks fields: never accepted.
    path = tmp_path / "settings.json"
    write_record(path, Settings(batch_size=3, seq_len=64))
    whole = path.read_bytes()
    cut = tmp_path / "cut.json"
    for end in range(len(whole.rstrip())):
        cut.write_bytes(whole[:end])
        with pytest.raises(InputFileError, match="corrupt file"):
            read_record(cut, Settings)


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path: Path) -> None:
    path = tmp_path / "future.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "mode": "infer"}))
    with pytest.raises(InputFileError, match=r"newer than this attnprof understands.*upgrade attnprof"):
        read_json(path)


def test_missing_file_and_directory_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_json(tmp_path / "nope.json")
    with pytest.raises(InputFileError, match="is a directory"):
        read_json(tmp_path)


def test_older_schema_is_migrated_step_by_step() -> None:
    # Version 1 stored "seq" and version 2 "seq_len" in tokens/1000; version 3 is current.
    steps = {
        1: lambda d: {**{k: v for k, v in d.items() if k != "seq"}, "kseq": d["seq"] / 1000},
        2: lambda d: {**{k: v for k, v in d.items() if k != "kseq"}, "seq_len": int(d["kseq"] * 1000)},
    }
    upgraded = migrate({"schema_version": 1, "seq": 512}, "old.json", current=3, migrations=steps)
    assert upgraded == {"schema_version": 3, "seq_len": 512}
    assert migrate({"schema_version": 2, "kseq": 1.0}, "x", current=3, migrations=steps)["seq_len"] == 1000


def test_older_schema_without_a_migration_is_refused() -> None:
    with pytest.raises(InputFileError, match="schema_version 1 is too old to read"):
        migrate({"schema_version": 1}, "old.json", current=2, migrations={})


def test_migration_that_cannot_apply_is_a_corrupt_file() -> None:
    steps = {1: lambda d: {**d, "seq_len": d["seq"]}}
    with pytest.raises(InputFileError, match=r"corrupt file \(cannot upgrade from schema_version 1"):
        migrate({"schema_version": 1}, "old.json", current=2, migrations=steps)


def test_read_json_applies_registered_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import attnprof.store as store

    monkeypatch.setattr(store, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(store, "MIGRATIONS", {})

    @store.migration(1)
    def rename_seq(data: dict) -> dict:
        data["seq_len"] = data.pop("seq")
        return data

    path = tmp_path / "v1.json"
    path.write_text('{"schema_version": 1, "seq": 64}')
    assert read_json(path) == {"schema_version": 2, "seq_len": 64}
    with pytest.raises(ValueError, match="already registered"):
        store.migration(1)(rename_seq)


def test_registry_has_a_step_for_every_older_version() -> None:
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.json"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.json"
    write_record(path, Settings())
    before = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("attnprof.store.os.fsync", disk_full)
    with pytest.raises(OutputFileError, match=r"a\.json: cannot write \(No space left on device\)") as caught:
        write_record(path, Settings(batch_size=7))
    assert caught.value.exit_code == 4
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_new_record_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "p" / "profile.json"
    written = [write_new_record(path, Settings(batch_size=n)) for n in (1, 2, 3)]
    assert [p.name for p in written] == ["profile.json", "profile-1.json", "profile-2.json"]
    assert [read_record(p, Settings).batch_size for p in written] == [1, 2, 3]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(p.name for p in written)


def test_unwritable_destination_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    for write in (write_record, write_new_record, append_jsonl):
        with pytest.raises(OutputFileError, match="cannot write"):
            write(tmp_path / "a-file" / "sub" / "x.json", Settings())


def test_nothing_is_ever_unpickled() -> None:
    # Files are JSON. Any deserialiser that can run code stays out of the package:
    # pickle, numpy's allow_pickle, pandas' read_pickle, torch.load without weights_only=True.
    package = Path(__file__).resolve().parents[1] / "attnprof"
    risky = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|allow_pickle\s*=\s*True|read_pickle\(|\bdill\b")
    for source in package.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        assert not risky.search(text), f"{source} deserialises with pickle"
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{source}: torch.load without weights_only=True"


def test_write_new_record_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(source: str, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr("attnprof.store.os.link", no_links)
    written = [write_new_record(tmp_path / "p.json", Settings(batch_size=n)) for n in (1, 2)]
    assert [p.name for p in written] == ["p.json", "p-1.json"]
    assert [read_record(p, Settings).batch_size for p in written] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p-1.json", "p.json"]
