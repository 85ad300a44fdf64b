"""Fuzzing the file loaders: random and mutated input gives a clean InputFileError, nothing else."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnprof.errors import InputFileError
from attnprof.profiling.records import Profile, TimeStats, load_profile
from attnprof.report.registry import load_report_record
from attnprof.store import from_json_dict, read_json, read_jsonl, to_json_dict, write_record
from attnprof.targets.records import WorkloadInfo
from tests.fuzzing import EDGE_OR_WRONG_TYPE, json_values, locations, mutations_of, replaced
from tests.samples import attention_info, layer, profile_of


def small_profile() -> Profile:
    attention = attention_info(head_dim=8, q_len=16, kv_len=16, flops=34816, flops_dense=65536, batch_size=1)
    attn = layer(
        "layers.0.attn",
        "attention",
        2,
        TimeStats.from_samples([0.5, 0.6, 0.7]),
        self_ms=0.2,
        flops=1000,
        nbytes=4096,
        memory=2048,
        params=512,
        achieved_tflops=0.01,
        bound="memory",
        attention=attention,
    )
    return profile_of(
        [attn],
        TimeStats.from_samples([1.0, 1.1]),
        8192,
        commit=None,
        workload=WorkloadInfo(target="zoo:decoder", fingerprint="abc123", parameter_count=512),
    )


VALID = to_json_dict(small_profile()) | {"schema_version": 1}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _load_or_clean_error(path: Path) -> None:
    for load in (load_profile, load_report_record):
        try:
            load(path)
        except InputFileError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)


def test_the_valid_profile_loads(folder: Path) -> None:
    write_record(folder / "valid.json", small_profile())
    assert load_profile(folder / "valid.json") == small_profile()


@given(st.binary(max_size=300))
def test_random_bytes(folder: Path, raw: bytes) -> None:
    path = folder / "random.json"
    path.write_bytes(raw)
    _load_or_clean_error(path)


@given(json_values)
def test_random_json_values(folder: Path, value: Any) -> None:
    path = folder / "value.json"
    path.write_text(json.dumps(value))
    _load_or_clean_error(path)
    with contextlib.suppress(InputFileError):
        from_json_dict(Profile, value)


@given(mutations_of(VALID))
def test_mutated_profiles(folder: Path, data: Any) -> None:
    path = folder / "mutated.json"
    path.write_text(json.dumps(data))
    _load_or_clean_error(path)


@given(st.data())
def test_byte_level_damage(folder: Path, data: st.DataObject) -> None:
    raw = bytearray(json.dumps(VALID, indent=1).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if action == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del raw[at:]
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at : at + data.draw(st.integers(1, 16))]
        if not raw:
            break
    path = folder / "damaged.json"
    path.write_bytes(bytes(raw))
    _load_or_clean_error(path)


@given(st.lists(st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()), max_size=5))
def test_random_json_lines(folder: Path, lines: list[bytes]) -> None:
    path = folder / "store.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        read_jsonl(path)
    except InputFileError as exc:
        assert str(path) in str(exc)


@given(st.text(max_size=200))
def test_random_text_to_read_json(folder: Path, text: str) -> None:
    path = folder / "text.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(InputFileError):
        assert isinstance(read_json(path), dict)


@pytest.mark.parametrize("edge", EDGE_OR_WRONG_TYPE)
def test_every_field_with_every_edge_value(edge: Any) -> None:
    # Exhaustive where random search is thin: each location of the profile, one edge value.
    for location in locations(VALID):
        try:
            from_json_dict(Profile, replaced(VALID, location, edge))
        except InputFileError as exc:
            assert "\n" not in str(exc)
