r"""The checks behind every numeric setting and fault: one-line ``ValueError``\ s.

NaN, the infinities and ``bool`` are never valid numbers here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "check_count",
    "check_delay",
    "check_number",
    "check_rate",
    "check_seconds",
    "check_share",
]


def check_number(
    name: str,
    value: object,
    *,
    allow_none: bool = False,
    integer: bool = False,
    allow_zero: bool = False,
) -> None:
    """Raise :exc:`ValueError` (one line) unless ``value`` is a finite number > 0.

    The one check behind every numeric setting: NaN and the infinities are never
    valid (a NaN timeout would never fire), nor is a ``bool``.
    """
    if value is None and allow_none:
        return
    kinds = int if integer else int | float
    valid = (
        not isinstance(value, bool)
        and isinstance(value, kinds)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not valid:
        what = "integer" if integer else "number"
        expected = f"a {what} >= 0" if allow_zero else f"a positive {what}"
        if allow_none:
            expected += " (or None for no limit)"
        raise ValueError(f"invalid {name} {value!r}: expected {expected}")


def check_seconds(name: str, value: object) -> float:
    """A finite number of seconds >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"invalid {name} {value!r}: expected seconds >= 0")
    return float(value)


def check_delay(value: object, name: str = "delay") -> float | tuple[float, float]:
    """Seconds >= 0, or a ``(min, max)`` range of them (a list too, from JSON)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) != 2:
            raise ValueError(
                f"invalid {name} {value!r}: expected seconds or (min, max)"
            )
        low = check_seconds(name, value[0])
        high = check_seconds(name, value[1])
        if low > high:
            raise ValueError(f"invalid {name} {value!r}: min is above max")
        return (low, high)
    return check_seconds(name, value)


def check_count(name: str, value: object, minimum: int) -> int:
    """An integer >= ``minimum`` (never a ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"invalid {name} {value!r}: expected an integer >= {minimum}")
    return value


def check_rate(value: object, name: str = "throttle") -> float:
    """A finite rate in bytes per second > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"invalid {name} {value!r}: expected bytes/s > 0")
    return float(value)


def check_share(name: str, value: object) -> float:
    """A share from 0 to 1."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= 1
    ):
        raise ValueError(f"invalid {name} {value!r}: expected a share from 0 to 1")
    return float(value)
