"""[tool.attnprof] in pyproject.toml and ATTNPROF_* variables: precedence and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnprof.errors import InputFileError, UsageError
from attnprof.settings import ProjectConfig

PYPROJECT = """
[project]
name = "demo"

[tool.attnprof]
baseline = "profiles/base.json"
thresholds = ["median:5%", "layers.*attn*:median:8%"]
alpha = 0.01
allow_machine_mismatch = true
treshold = "typo"

[tool.attnprof.settings]
repeats = 20
seq_len = 64
colour = "blue"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "src" / "deep").mkdir(parents=True)
    return tmp_path


def test_pyproject_is_found_from_a_subfolder(project: Path) -> None:
    config = ProjectConfig.load(project / "src" / "deep", environ={})
    assert config.source == project / "pyproject.toml"
    assert config.resolve("baseline", None, None) == "profiles/base.json"
    assert config.resolve("thresholds", None, ["median:1%"]) == ["median:5%", "layers.*attn*:median:8%"]
    assert config.resolve("alpha", None, 0.002) == 0.01
    assert config.resolve("metrics", None, ["*"]) == ["*"]  # not set anywhere: the default
    assert config.unknown_keys() == ["treshold", "settings.colour"]


def test_command_line_beats_environment_beats_pyproject(project: Path) -> None:
    environ = {"ATTNPROF_BASELINE": "env.json", "ATTNPROF_THRESHOLDS": "median:3%, p90:9%"}
    config = ProjectConfig.load(project, environ=environ)
    assert config.resolve("baseline", "cli.json", None) == "cli.json"
    assert config.resolve("baseline", None, None) == "env.json"
    assert config.resolve("thresholds", [], None) == ["median:3%", "p90:9%"]  # an empty CLI list is unset
    assert config.resolve("thresholds", ["mean:1%"], None) == ["mean:1%"]


def test_settings_precedence(project: Path) -> None:
    config = ProjectConfig.load(project, environ={"ATTNPROF_SEQ_LEN": "32", "ATTNPROF_DTYPE": "bf16"})
    assert config.settings_overrides({"repeats": 5, "batch_size": None}) == {
        "repeats": 5,
        "seq_len": 32,
        "dtype": "bf16",
    }
    assert ProjectConfig.load(project, environ={}).settings_overrides({}) == {"repeats": 20, "seq_len": 64}


def test_no_pyproject_means_defaults(tmp_path: Path) -> None:
    config = ProjectConfig.load(tmp_path, environ={})
    assert config.source is None
    assert config.resolve("alpha", None, 0.002) == 0.002
    assert config.settings_overrides({}) == {}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ATTNPROF_ALPHA": "small"}, "ATTNPROF_ALPHA='small' is not a valid float"),
        ({"ATTNPROF_ALLOW_MACHINE_MISMATCH": "maybe"}, "ATTNPROF_ALLOW_MACHINE_MISMATCH"),
    ],
)
def test_bad_environment_values(project: Path, environ: dict[str, str], message: str) -> None:
    config = ProjectConfig.load(project, environ=environ)
    key = "alpha" if "ALPHA" in next(iter(environ)) else "allow_machine_mismatch"
    with pytest.raises(UsageError, match=message):
        config.resolve(key, None, None)


def test_bad_pyproject_values(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.attnprof]\nalpha = "0.01"\nthresholds = [5]\n')
    config = ProjectConfig.load(tmp_path, environ={})
    with pytest.raises(UsageError, match=r"\[tool.attnprof\] alpha must be a float"):
        config.resolve("alpha", None, 0.002)
    with pytest.raises(UsageError, match="thresholds must be a list of strings"):
        config.resolve("thresholds", None, None)


def test_corrupt_pyproject_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.attnprof\n")
    with pytest.raises(InputFileError, match=r"pyproject\.toml: cannot read"):
        ProjectConfig.load(tmp_path, environ={})
