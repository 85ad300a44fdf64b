"""Budget and objective strings from the command line -> a validated `Budget`.

`--budget memory=20GiB`, `--budget latency=15ms`, `--budget energy=2J`, `--max-error 1e-2`,
`--max-quality-loss 1%`, `--headroom 10%`. A malformed string is a UsageError (exit 2) whose
message shows a valid example, so the user can fix it without reading the docs.
"""

from __future__ import annotations

import math
import re

from attnprof.errors import UsageError
from attnprof.plans.records import OBJECTIVES, Budget

# A measurement this many standard deviations worse than predicted refutes the prediction. It lives
# here, in a module without torch, because `tune --help` shows it.
CONTRADICTION_SIGMAS = 3.0

BUDGET_EXAMPLE = "--budget memory=20GiB --budget latency=15ms --budget energy=2J"

# Decimal and binary prefixes, as in `nvidia-smi` (MiB) and datasheets (GB).
_BYTE_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}  # fmt: skip
_TIME_UNITS_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "min": 60e3}
_ENERGY_UNITS_J = {"mj": 1e-3, "j": 1.0, "kj": 1e3, "wh": 3600.0}

_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ%]*)\s*$")


def _split_quantity(text: str, flag: str, example: str, allow_zero: bool = False) -> tuple[float, str]:
    match = _QUANTITY.match(text)
    if not match:
        raise UsageError(f"{flag} {text!r}: not a number with a unit; e.g. {example}")
    value = float(match.group(1))
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{flag} {text!r}: must be positive; e.g. {example}")
    return value, match.group(2)


def _scaled(value: float, factor: float, flag: str, text: str, example: str) -> float:
    """value x factor, refusing a product beyond the float range (e.g. 1e300TiB)."""
    scaled = value * factor
    if not math.isfinite(scaled):
        raise UsageError(f"{flag}{text}: too large; e.g. {example}")
    return scaled


def parse_bytes(text: str, flag: str = "--budget memory=") -> int:
    value, unit = _split_quantity(text, flag, "memory=20GiB or memory=512MB")
    factor = _BYTE_UNITS.get(unit.lower() or "b")
    if factor is None:
        raise UsageError(
            f"{flag}{text}: unknown size unit {unit!r}; e.g. --budget memory=20GiB (or MiB, GB, MB)"
        )
    return int(_scaled(value, factor, flag, text, "--budget memory=20GiB"))


def parse_time_ms(text: str, flag: str = "--budget latency=") -> float:
    value, unit = _split_quantity(text, flag, "latency=15ms")
    factor = _TIME_UNITS_MS.get(unit.lower())
    if factor is None:
        raise UsageError(f"{flag}{text}: need a time unit (ns, us, ms, s); e.g. --budget latency=15ms")
    return _scaled(value, factor, flag, text, "--budget latency=15ms")


def parse_energy_j(text: str, flag: str = "--budget energy=") -> float:
    value, unit = _split_quantity(text, flag, "energy=2J")
    factor = _ENERGY_UNITS_J.get(unit.lower())
    if factor is None:
        raise UsageError(f"{flag}{text}: need an energy unit (mJ, J, kJ, Wh); e.g. --budget energy=2J")
    return _scaled(value, factor, flag, text, "--budget energy=2J")


def parse_fraction(text: str, flag: str, example: str, upper: float | None = None) -> float:
    """`10%` or `0.1` -> 0.1; `1e-2` -> 0.01."""
    value, unit = _split_quantity(text, flag, example, allow_zero=True)
    if unit == "%":
        value /= 100.0
    elif unit:
        raise UsageError(f"{flag} {text!r}: unknown unit {unit!r}; e.g. {example}")
    if upper is not None and value >= upper:
        raise UsageError(f"{flag} {text!r}: must be below {upper:g}; e.g. {example}")
    return value


_BUDGET_PARSERS = {"memory": parse_bytes, "latency": parse_time_ms, "energy": parse_energy_j}
_BUDGET_FIELDS = {"memory": "memory_bytes", "latency": "latency_ms", "energy": "energy_j"}


def parse_budget(
    budgets: list[str] | None = None,
    *,
    gpus: int = 1,
    max_error: str | None = None,
    max_quality_loss: str | None = None,
    headroom: str | None = None,
) -> Budget:
    """The command-line budget flags as one `Budget` (UsageError, exit 2, when malformed)."""
    values: dict[str, float | int] = {}
    for item in budgets or []:
        name, sep, quantity = item.partition("=")
        name = name.strip().lower()
        if not sep or not quantity.strip():
            raise UsageError(f"--budget {item!r}: expected NAME=VALUE, e.g. {BUDGET_EXAMPLE}")
        if name not in _BUDGET_PARSERS:
            raise UsageError(
                f"--budget {item!r}: unknown budget {name!r} (memory, latency or energy), "
                f"e.g. {BUDGET_EXAMPLE}"
            )
        field_name = _BUDGET_FIELDS[name]
        if field_name in values:
            raise UsageError(f"--budget {name} given twice; give each budget once, e.g. {BUDGET_EXAMPLE}")
        values[field_name] = _BUDGET_PARSERS[name](quantity.strip())
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise UsageError(f"--gpus must be a positive integer, e.g. --gpus 8; got {gpus!r}")
    return Budget(
        **values,  # type: ignore[arg-type]
        gpus=gpus,
        max_error=None if max_error is None else parse_fraction(max_error, "--max-error", "--max-error 1e-2"),
        max_quality_loss=None
        if max_quality_loss is None
        else parse_fraction(max_quality_loss, "--max-quality-loss", "--max-quality-loss 1%", upper=1.0),
        headroom=0.0
        if headroom is None
        else parse_fraction(headroom, "--headroom", "--headroom 10%", upper=1.0),
    )


def parse_objective(text: str) -> str:
    objective = text.strip().lower()
    if objective not in OBJECTIVES:
        raise UsageError(
            f"--objective {text!r}: must be one of {', '.join(OBJECTIVES)}, e.g. --objective latency"
        )
    return objective
