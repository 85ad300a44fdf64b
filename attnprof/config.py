"""Project configuration: the `[tool.attnprof]` table of pyproject.toml and ATTNPROF_* variables.

Precedence, highest first: command line > environment (ATTNPROF_<KEY>) > pyproject.toml >
built-in defaults. pyproject.toml is the nearest one in the working directory or above it.

    [tool.attnprof]
    target = "examples/model.py"          # ATTNPROF_TARGET
    baseline = "profiles/decoder.json"    # ATTNPROF_BASELINE
    thresholds = ["median:5%", "memory:2%", "layers.*attn*:median:8%"]   # ATTNPROF_THRESHOLDS
    metrics = ["*"]                       # ATTNPROF_METRICS
    alpha = 0.002                         # ATTNPROF_ALPHA
    allow_machine_mismatch = false        # ATTNPROF_ALLOW_MACHINE_MISMATCH

    [tool.attnprof.settings]              # how baselines are recorded; ATTNPROF_REPEATS, ...
    repeats = 20
    seq_len = 128

List values in the environment are separated by commas or whitespace; booleans are
1/true/yes/on or 0/false/no/off.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnprof.errors import InputFileError, UsageError
from attnprof.records import Settings

ENV_PREFIX = "ATTNPROF_"
SETTINGS_TABLE = "settings"
# Keys of [tool.attnprof] and the type each holds.
KEYS: dict[str, type] = {
    "target": str,
    "baseline": str,
    "thresholds": list,
    "metrics": list,
    "alpha": float,
    "allow_machine_mismatch": bool,
}
SETTINGS_KEYS: dict[str, type] = {f.name: type(f.default) for f in dataclasses.fields(Settings)}
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def find_pyproject(start: Path) -> Path | None:
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _from_env(name: str, text: str, kind: type) -> Any:
    try:
        if kind is list:
            return [item for item in text.replace(",", " ").split() if item]
        if kind is bool:
            word = text.strip().lower()
            if word not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError(text)
            return word in TRUE_WORDS
        return kind(text.strip())
    except ValueError:
        raise UsageError(f"environment variable {name}={text!r} is not a valid {kind.__name__}") from None


def _from_toml(where: str, value: Any, kind: type) -> Any:
    if kind is list and isinstance(value, str):
        value = [value]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    valid = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is list and valid:
        valid = all(isinstance(item, str) for item in value)
    if not valid:
        expected = "a list of strings" if kind is list else f"a {kind.__name__}"
        raise UsageError(f"{where} must be {expected}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ProjectConfig:
    """The [tool.attnprof] table (empty without one) and the environment it is read with."""

    table: Mapping[str, Any]
    source: Path | None
    environ: Mapping[str, str]

    @classmethod
    def load(cls, start: Path | None = None, environ: Mapping[str, str] | None = None) -> ProjectConfig:
        path = find_pyproject((start or Path.cwd()).resolve())
        table: Mapping[str, Any] = {}
        if path is not None:
            try:
                document = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise InputFileError(f"{path}: cannot read ({exc})") from None
            table = document.get("tool", {}).get("attnprof", {})
            if not isinstance(table, dict):
                raise InputFileError(f"{path}: [tool.attnprof] must be a table")
        return cls(table, path, os.environ if environ is None else environ)

    def _where(self, key: str) -> str:
        return f"{self.source}: [tool.attnprof] {key}"

    def unknown_keys(self) -> list[str]:
        """Keys of [tool.attnprof] this attnprof does not read (likely typos)."""
        settings = self.table.get(SETTINGS_TABLE, {})
        unknown = [k for k in self.table if k not in KEYS and k != SETTINGS_TABLE]
        if isinstance(settings, dict):
            unknown += [f"{SETTINGS_TABLE}.{k}" for k in settings if k not in SETTINGS_KEYS]
        return unknown

    def resolve(self, key: str, cli_value: Any, default: Any) -> Any:
        """The value of `key`: the command line's unless None, else ATTNPROF_<KEY>, else
        pyproject's, else `default`."""
        kind = KEYS[key]
        if cli_value is not None and cli_value != []:
            return cli_value
        env_name = ENV_PREFIX + key.upper()
        if env_name in self.environ:
            return _from_env(env_name, self.environ[env_name], kind)
        if key in self.table:
            return _from_toml(self._where(key), self.table[key], kind)
        return default

    def settings_overrides(self, cli: Mapping[str, Any]) -> dict[str, Any]:
        """Settings field -> value, for the fields set anywhere (command line, environment or
        [tool.attnprof.settings]); unset fields are left to the workload's defaults."""
        table = self.table.get(SETTINGS_TABLE, {})
        if not isinstance(table, dict):
            raise UsageError(f"{self._where(SETTINGS_TABLE)} must be a table")
        values: dict[str, Any] = {}
        for key, kind in SETTINGS_KEYS.items():
            env_name = ENV_PREFIX + key.upper()
            if cli.get(key) is not None:
                values[key] = cli[key]
            elif env_name in self.environ:
                values[key] = _from_env(env_name, self.environ[env_name], kind)
            elif key in table:
                values[key] = _from_toml(self._where(f"{SETTINGS_TABLE}.{key}"), table[key], kind)
        return values
