"""Shared test set-up: GPU tests skip without CUDA; torch uses one thread so tests stay predictable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

MODELS = Path(__file__).parent / "models"


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def models_dir() -> Path:
    return MODELS
