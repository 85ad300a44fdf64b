"""Fuzzing target strings: anything a user may type is loaded or refused with a clean error."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from attnprof.errors import AttnprofError
from attnprof.targets.load import load_workload


@pytest.fixture(scope="module")
def in_empty_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Relative paths in random targets resolve in an empty folder, never in the repository.
    folder = tmp_path_factory.mktemp("targets")
    (folder / "folder.py").mkdir()
    (folder / "empty.py").write_text("")
    (folder / "no_inputs.py").write_text("def build_model(device, dtype):\n    return None\n")
    before = os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(before)


def _imports_a_real_module(target: str) -> bool:
    """Whether loading `target` would import an installed module (and run its top-level code)."""
    if target.startswith(("zoo:", "hf:")):
        return False
    path_part = target.rpartition(":")[0] if ":" in target else target
    top = path_part.split(".")[0]
    if not top.isidentifier():
        return False
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


PREFIXES = st.sampled_from(["", "zoo:", "hf:", "./", "../", "/", "empty.py", "folder.py", "no_inputs.py", "x.py"])
SUFFIXES = st.sampled_from(["", ":", ":build_model", ":1x", ".py", "/config.json", ":make_net"])
NAMES = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="abc._:/-\\ \x00", max_size=30),
    st.integers(0, 5000).map(lambda n: "x" * n),
)
TARGETS = st.one_of(st.tuples(PREFIXES, NAMES, SUFFIXES).map("".join), st.text(max_size=40))


def _load_or_clean_error(target: str) -> None:
    try:
        load_workload(target)
    except AttnprofError as exc:
        assert exc.exit_code in (2, 3, 4)
        assert "\n" not in str(exc)


@given(TARGETS)
def test_random_targets(in_empty_folder: Path, target: str) -> None:
    assume(not _imports_a_real_module(target))
    _load_or_clean_error(target)


@pytest.mark.parametrize(
    "target",
    [
        "x" * 300 + ".py",  # longer than a file name may be
        "hf:" + "x" * 5000,
        "a\x00.py",
        "hf:\x00",
        "zoo:\x00",
        "folder.py",  # a directory named like a model file
        "empty.py",  # no build_model
        "no_inputs.py",  # no example_inputs
        "empty.py:1x",
        ":",
        "hf:",
        "zoo:",
    ],
)
def test_hostile_targets(in_empty_folder: Path, target: str) -> None:
    with pytest.raises(AttnprofError) as caught:
        load_workload(target)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
