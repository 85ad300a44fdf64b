"""Fuzzing the loaders of every record `attnprof report` reads: fitted cost models and check
results, mutated field by field, load or fail with a clean InputFileError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from attnprof.costmodel.records import CostModel
from attnprof.errors import InputFileError
from attnprof.report.registry import load_report_record
from attnprof.store import read_record, to_json_dict
from tests.fuzzing import EDGE_OR_WRONG_TYPE, locations, mutations_of, replaced
from tests.samples import sample_check, sample_fit

FIT = to_json_dict(sample_fit()) | {"schema_version": 1}
CHECK = to_json_dict(sample_check()) | {"schema_version": 1}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


def _load_or_clean_error(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))
    loaders = [load_report_record, lambda p: read_record(p, CostModel)]  # `predict` reads the model
    for load in loaders:
        try:
            load(path)
        except InputFileError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)


def test_the_samples_load(folder: Path) -> None:
    for name, data in (("fit", FIT), ("check", CHECK)):
        (folder / f"{name}.json").write_text(json.dumps(data))
        assert load_report_record(folder / f"{name}.json")[0].kind


@given(mutations_of(FIT))
def test_mutated_cost_models(folder: Path, data: Any) -> None:
    _load_or_clean_error(folder / "fit.json", data)


@given(mutations_of(CHECK))
def test_mutated_check_results(folder: Path, data: Any) -> None:
    _load_or_clean_error(folder / "check.json", data)


@pytest.mark.slow
@pytest.mark.parametrize("edge", EDGE_OR_WRONG_TYPE)
def test_every_cost_model_field_with_every_edge_value(folder: Path, edge: Any) -> None:
    for location in locations(FIT):
        _load_or_clean_error(folder / "edge.json", replaced(FIT, location, edge))
