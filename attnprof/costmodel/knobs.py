"""The measurable knobs: what a sweep varies and the cost model is fitted over.

Shape knobs (batch size, sequence length) are numeric ranges the cost model turns into
physical features; choice knobs (dtype, backend, threads) are discrete, and each combination
of their values gets its own fitted coefficients. A configuration (`Config`) is one value per
knob; `config_of` is the full key a measurement is stored under.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attnprof import backends as known_backends
from attnprof.errors import UsageError
from attnprof.settings import DTYPES, Settings

ConfigValue = int | str
Config = dict[str, ConfigValue]

# Shape knobs: the cost model turns them into physical features (FLOPs, bytes, S² pairs).
SHAPE_KNOBS: tuple[str, ...] = ("batch_size", "seq_len")
# Choice knobs: each combination of their values gets its own fitted coefficients.
CHOICE_KNOBS: tuple[str, ...] = ("dtype", "backend", "threads")
MEASURABLE_KNOBS: tuple[str, ...] = SHAPE_KNOBS + CHOICE_KNOBS

@dataclass(frozen=True)
class Knob:
    """One tunable or measurable setting: a numeric range `low..high` or a tuple of `choices`."""

    name: str
    low: int = 0
    high: int = 0
    choices: tuple[ConfigValue, ...] = ()

    def __post_init__(self) -> None:
        if self.choices:
            if len(set(self.choices)) != len(self.choices):
                raise UsageError(f"--{self.flag}: repeated value in {list(self.choices)}")
            return
        if self.low < 1 or self.high < self.low:
            raise UsageError(f"--{self.flag}: range {self.low}:{self.high} must satisfy 1 <= low <= high")

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")

    @property
    def numeric(self) -> bool:
        return not self.choices

    def values(self) -> tuple[ConfigValue, ...]:
        """The distinct values a sweep must see: the choices, or the two ends of the range."""
        return self.choices if self.choices else tuple(sorted({self.low, self.high}))


def default_knobs(device: str, threads: int) -> dict[str, Knob]:
    """The sweep's default space on `device`; `threads` is the current CPU thread count."""
    backends: tuple[ConfigValue, ...] = known_backends.default_sweep("cpu" if device == "cpu" else "cuda")
    return {
        "batch_size": Knob("batch_size", low=1, high=4),
        "seq_len": Knob("seq_len", low=32, high=256),
        "dtype": Knob("dtype", choices=("fp32", "bf16")),
        "backend": Knob("backend", choices=backends),
        "threads": Knob("threads", choices=(max(threads, 1),)),
    }


def parse_knob(name: str, text: str) -> Knob:
    """A knob from a command-line value: `64:512` (range), `fp32,bf16` or `1,2` (choices), `128`."""
    if name not in MEASURABLE_KNOBS:
        raise UsageError(f"unknown knob {name!r}; known: {', '.join(MEASURABLE_KNOBS)}")
    flag = name.replace("_", "-")
    text = text.strip()
    if not text:
        raise UsageError(f"--{flag}: empty value")
    if name in SHAPE_KNOBS:
        if ":" in text:
            low_text, _, high_text = text.partition(":")
            return Knob(name, low=_positive_int(flag, low_text), high=_positive_int(flag, high_text))
        values = [_positive_int(flag, part) for part in text.split(",")]
        return Knob(name, low=min(values), high=max(values))
    parts = [part.strip() for part in text.split(",")]
    if name == "threads":
        return Knob(name, choices=tuple(_positive_int(flag, part) for part in parts))
    allowed = DTYPES if name == "dtype" else known_backends.NAMES
    for part in parts:
        if part not in allowed:
            raise UsageError(f"--{flag}: {part!r} is not one of {', '.join(allowed)}")
    return Knob(name, choices=tuple(parts))


def _positive_int(flag: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise UsageError(f"--{flag}: {text.strip()!r} is not an integer") from None
    if value < 1:
        raise UsageError(f"--{flag}: {value} must be a positive integer")
    return value


def choice_key(config: Mapping[str, ConfigValue], ignore: Sequence[str] = ()) -> str:
    """A readable, stable name for the non-shape part of a configuration, e.g. `backend=flash,dtype=fp32`."""
    return ",".join(
        f"{name}={config[name]}" for name in sorted(config) if name not in SHAPE_KNOBS and name not in ignore
    )


def config_of(settings: Settings) -> Config:
    """The full configuration a measurement is keyed by: the knobs plus mode, device and, when
    it is not wall time, the clock (so stores made before the clock option keep their keys)."""
    config: Config = {
        "batch_size": settings.batch_size,
        "seq_len": settings.seq_len,
        "dtype": settings.dtype,
        "backend": settings.backend,
        "threads": settings.threads,
        "mode": settings.mode,
        "device": settings.device,
    }
    if settings.clock != "wall":
        config["clock"] = settings.clock
    return config


# Knobs that change the cost of attention layers only: other kinds share coefficients across them.
ATTENTION_ONLY_KNOBS: tuple[str, ...] = ("backend",)


def latency_group(kind: str, config: Mapping[str, ConfigValue]) -> str:
    """The group of fitted latency coefficients a configuration's layers of `kind` use."""
    return choice_key(config, ignore=() if kind == "attention" else ATTENTION_ONLY_KNOBS)


def memory_group(config: Mapping[str, ConfigValue]) -> str:
    """The group of fitted memory coefficients a configuration uses."""
    return choice_key(config)
