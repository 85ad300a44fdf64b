"""Strategies shared by the fuzz tests: random JSON, edge values, and mutations of valid records."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

# Values at the edges of what records accept: numbers beyond a float's range, negative and
# zero sizes, 64-bit overflow, strings that look like numbers or like valid enum values.
EDGE_VALUES: list[Any] = [10**400, -(10**400), 2**63, -1, 0, "", "nan", "1e999", "infer", "attention"]
EDGE_OR_WRONG_TYPE: list[Any] = [*EDGE_VALUES, None, [], {}, True, 1.5, -0.0]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(EDGE_VALUES),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def locations(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location inside nested dicts and lists as a key path, the root excluded."""
    found = []
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return found
    for key, value in items:
        found.append((*prefix, key))
        found += locations(value, (*prefix, key))
    return found


def replaced(data: Any, location: tuple, value: Any) -> Any:
    """A deep copy of `data` with the value at `location` replaced."""
    data = copy.deepcopy(data)
    parent = data
    for key in location[:-1]:
        parent = parent[key]
    parent[location[-1]] = copy.deepcopy(value)
    return data


@st.composite
def mutations_of(draw: st.DrawFn, valid: Any) -> Any:
    """`valid` with one to three locations replaced by random JSON or removed."""
    data = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        location = draw(st.sampled_from(locations(valid)))
        parent = data
        try:
            for key in location[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(location[-1], None)
            else:
                parent[location[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this location
    return data
