"""Shared test set-up: GPU tests skipped without CUDA; torch on one thread; hypothesis reproducible."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

MODELS = Path(__file__).parent / "models"
pytest_plugins = ["pytester"]  # tests/test_schema.py runs a small suite of its own

# "ci" (the default) derandomizes: the same examples on every run, a bounded number of them.
# HYPOTHESIS_PROFILE=explore searches with fresh random examples, many more of them.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=150,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Calibration files live in the user's cache: tests must neither read nor write the real one.
    monkeypatch.setenv("ATTNPROF_CACHE_DIR", str(tmp_path_factory.mktemp("attnprof-cache")))


@functools.cache
def _schema_validator(kind: str) -> Any:
    import jsonschema

    from attnprof.report.registry import record_schema

    return jsonschema.Draft202012Validator(record_schema(kind))


@pytest.fixture(autouse=True)
def _written_records_match_their_schema(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every profile, plan, check result and fit a test writes (in this process, through the one
    writer of record files) validates against its published JSON Schema."""
    from attnprof import store
    from attnprof.report.registry import ADAPTERS

    invalid: list[str] = []
    write = store._record_text

    def validated(record: Any) -> str:
        text = write(record)
        for adapter in ADAPTERS:
            if isinstance(record, adapter.record_type):
                errors = sorted(_schema_validator(adapter.kind).iter_errors(json.loads(text)), key=str)
                invalid.extend(f"{adapter.kind}: /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
                               for e in errors[:3])
        return text

    monkeypatch.setattr(store, "_record_text", validated)
    yield
    if invalid:
        pytest.fail("a written record does not match its JSON Schema:\n" + "\n".join(invalid), pytrace=False)


@pytest.fixture
def models_dir() -> Path:
    return MODELS


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """The CLI in-process, in a scratch folder, plain output at a fixed width."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "160")
    return CliRunner()
