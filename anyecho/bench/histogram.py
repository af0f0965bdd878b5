"""Latency histograms that load generator processes send to the runner and merge."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

__all__ = ["Histogram"]

#: Values below this are counted exactly; above, each power of two is split into
#: ``_EXACT // 2`` buckets, so a bucket's midpoint is within 1/128 of its values.
_EXACT = 128
_STEPS = _EXACT // 2
_SUB_BITS = _EXACT.bit_length() - 1  # 7


def bucket_of(value: int) -> int:
    """The index of the bucket that holds ``value`` (a non-negative integer)."""
    if value < _EXACT:
        return value
    shift = value.bit_length() - _SUB_BITS
    return _EXACT + (shift - 1) * _STEPS + ((value >> shift) - _STEPS)


def bucket_midpoint(index: int) -> float:
    """The value that stands for every value of bucket ``index``."""
    if index < _EXACT:
        return float(index)
    shift, step = divmod(index - _EXACT, _STEPS)
    shift += 1
    low = (_STEPS + step) << shift
    return low + ((1 << shift) - 1) / 2


class Histogram:
    """Counts of integer values (nanoseconds, here) in log-linear buckets.

    Quantiles come out within 1 % of the exact ones; the minimum and maximum are
    exact. Histograms of several processes :meth:`merge` into one.
    """

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.count = 0
        self.minimum = 0
        self.maximum = 0

    def add_all(self, values: Iterable[int]) -> None:
        """Count each of ``values``."""
        values = list(values)
        if not values:
            return
        low, high = min(values), max(values)
        self.minimum = low if not self.count else min(self.minimum, low)
        self.maximum = max(self.maximum, high)
        self.count += len(values)
        self.counts.update(map(bucket_of, values))

    def merge(self, other: Histogram) -> None:
        """Add the counts of ``other`` to these."""
        if not other.count:
            return
        self.minimum = (
            other.minimum if not self.count else min(self.minimum, other.minimum)
        )
        self.maximum = max(self.maximum, other.maximum)
        self.count += other.count
        self.counts.update(other.counts)

    def quantile(self, q: float) -> float:
        """The value below which a fraction ``q`` of the values fall (``1``: maximum).

        :raises ValueError: when the histogram is empty
        """
        if not self.count:
            raise ValueError("quantile of an empty histogram")
        if q >= 1:
            return float(self.maximum)
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(max(bucket_midpoint(index), self.minimum), self.maximum)
        return float(self.maximum)  # pragma: no cover - the counts add up to count

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, read back by :meth:`from_json`."""
        return {
            "count": self.count,
            "min": self.minimum,
            "max": self.maximum,
            "buckets": sorted(self.counts.items()),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        """The histogram that :meth:`to_json` described."""
        histogram = cls()
        histogram.count = int(data["count"])
        histogram.minimum = int(data["min"])
        histogram.maximum = int(data["max"])
        histogram.counts = Counter({int(i): int(n) for i, n in data["buckets"]})
        return histogram
