"""Run settings: the Settings record, and where each of its values comes from.

Precedence, highest first: command line > environment (ATTNPROF_<KEY>) > pyproject.toml
[tool.attnprof.settings] > the workload's own defaults (a model.py's ATTNPROF dict) > the
built-in defaults of Settings. `ProjectConfig.settings_overrides` merges the first three;
`resolve_settings` lays them over the workload's defaults. The [tool.attnprof] table also
holds the gate's keys (target, baseline, thresholds, ...), resolved the same way.

pyproject.toml is the nearest one in the working directory or above it.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from attnprof import backends
from attnprof.errors import InputFileError, UsageError

Mode = Literal["infer", "train"]
MODES: tuple[str, ...] = ("infer", "train")
DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16", "fp64")
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
                  "float64": "fp64", "double": "fp64"}
# How CPU steps are timed: wall time, or the process's CPU time (immune to time slicing by
# other processes on a shared machine, which is what makes CI timings drift).
CLOCKS: tuple[str, ...] = ("wall", "cpu")
# transformers' attention implementations an hf: target can be built with; auto: the class's default.
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("auto", "eager", "sdpa", "flex_attention")


def canonical_dtype_name(name: str) -> str:
    """'float16' -> 'fp16'; unknown names are a usage error."""
    key = _DTYPE_ALIASES.get(name.lower(), name.lower())
    if key not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return key


# The range of each whole-number setting, wherever it comes from (a flag, the environment,
# pyproject.toml, a saved file): sizes whose tensors could exist, counts a run could finish.
LIMITS: dict[str, tuple[int, int]] = {
    "batch_size": (1, 2**24),
    "seq_len": (1, 2**24),
    "repeats": (1, 100_000),
    "warmup": (0, 100_000),
    "threads": (0, 4096),  # 0: leave torch's thread count as it is
}


@dataclass
class Settings:
    """How a workload is run; validated on construction so bad values fail early (exit 2)."""

    mode: Mode = "infer"
    batch_size: int = 1
    seq_len: int = 128
    dtype: str = "fp32"
    backend: str = "auto"
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 10
    threads: int = 0  # 0: leave torch's thread count as it is
    clock: str = "wall"  # CPU devices only; GPU steps are always timed by CUDA events
    reference_probe: bool = False  # time a fixed reference workload after each plain step (drift)
    attn_implementation: str = "auto"  # hf: targets: transformers' attention implementation

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer from {low} to {high}, got {value!r}")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.backend not in backends.NAMES:
            raise UsageError(f"--backend must be one of {', '.join(backends.NAMES)}, got {self.backend!r}")
        if not (self.device == "cpu" or self.device == "meta" or self.device.startswith("cuda")):
            raise UsageError(f"--device must be cpu, meta, cuda or cuda:N, got {self.device!r}")
        if not isinstance(self.reference_probe, bool):
            raise UsageError(f"reference_probe must be true or false, got {self.reference_probe!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise UsageError(f"--attn-implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, "
                             f"got {self.attn_implementation!r}")
        if self.clock not in CLOCKS:
            raise UsageError(f"--clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.clock == "cpu" and self.device.startswith("cuda"):
            raise UsageError("--clock cpu times CPU steps only: GPU steps are timed by CUDA events")


class HasDefaults(Protocol):
    """A workload, as far as settings care: the defaults its target declares."""

    defaults: dict[str, Any]


def resolve_settings(workload: HasDefaults, overrides: Mapping[str, Any]) -> Settings:
    """Built-in defaults < the workload's ATTNPROF defaults < explicit overrides (None = unset)."""
    values: dict[str, Any] = dict(workload.defaults)
    values.update({key: value for key, value in overrides.items() if value is not None})
    unknown = sorted(set(values) - set(Settings.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown settings {unknown}")
    return Settings(**values)


def settings_for(base: Settings, config: Mapping[str, int | str]) -> Settings:
    """`base` with the configuration's values put in (validated by Settings)."""
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise UsageError(f"configuration names unknown settings: {', '.join(unknown)}")
    return dataclasses.replace(base, **dict(config))


def with_plan_choices(
    base: Settings, backend: str, batch_size: int | None = None, threads: int = 0, dtype: str | None = None
) -> Settings:
    """`base` as a plan's choices run it: their backend, and their micro-batch, CPU threads and
    precision where they set one (None or 0 keep base's). TF32 runs with fp32 settings: fp32
    storage, with its tensor-core matmuls switched on around the run (Settings has no tf32)."""
    return dataclasses.replace(
        base,
        backend=backend,
        batch_size=batch_size or base.batch_size,
        threads=threads or base.threads,
        dtype=base.dtype if dtype is None else ("fp32" if dtype == "tf32" else dtype),
    )


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
    "module_limit": str,  # e.g. "10%": gate every module's timing too (attnprof.gate.compare)
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
