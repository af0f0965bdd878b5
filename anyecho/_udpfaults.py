"""UDP impairments: which datagrams to drop, duplicate, reorder, delay or corrupt.

:class:`UdpFaults` says how often each impairment strikes; :meth:`UdpFaults.decide`
draws one datagram's fate from a :class:`random.Random`. The UDP service
(:mod:`._udp`) carries the fates out. Every datagram costs the same number of
draws whatever happens to it, so the same seed and the same sequence of datagrams
give the same fates, datagram by datagram.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import NamedTuple

from ._checks import check_delay, check_seconds, check_share

__all__ = ["UdpDelay", "UdpFate", "UdpFaults", "udp_faults_from"]

#: Seconds, or a ``(min, max)`` range to draw each datagram's delay from.
UdpDelay = float | tuple[float, float]

#: The kinds of impairment, as counted in ``StatsSnapshot.udp_faults_injected``.
KINDS = ("corrupt", "delay", "drop", "duplicate", "reorder")


class UdpFate(NamedTuple):
    """What happens to one datagram."""

    drop: bool
    duplicate: bool
    reorder: bool
    #: the index of the byte to corrupt, or ``None``
    corrupt_at: int | None
    #: the XOR mask applied to that byte (1-255)
    corrupt_mask: int
    #: seconds to hold the answer (0: none)
    delay: float


@dataclass(frozen=True, kw_only=True)
class UdpFaults:
    """Impairments of the datagram echo, drawn datagram by datagram from one seed.

    Each share is the probability, from 0 to 1, that a datagram suffers that
    impairment; they are drawn independently, so a datagram may be both corrupted
    and duplicated. A dropped datagram suffers nothing else. Invalid values raise
    :exc:`ValueError` with a one-line message. Every field is a plain JSON value,
    and :meth:`from_json` builds one from a mapping of the field names.

    :param drop: the share of datagrams never answered (counted in
        ``datagrams_dropped_by_reason["fault"]``)
    :param duplicate: the share answered twice, back to back
    :param reorder: the share held back until a later datagram from the same
        source has been answered, and sent right after it: the client sees them
        swapped
    :param reorder_hold: the longest a held-back datagram waits for a later one
        (seconds); when none comes it is sent on its own, in order after all
        (and counted as a delay)
    :param corrupt: the share whose answer has one byte changed (same length;
        empty datagrams cannot be corrupted and are answered as they are)
    :param delay: hold each answer this many seconds, or a random time in a
        ``(min, max)`` range, on AnyIO's clock; datagrams delayed by different
        times may overtake each other
    :param delay_fraction: the share of datagrams that ``delay`` applies to
    :param max_held: the most datagrams held at once, for delays and reordering
        together (and 16 MiB of them); a datagram that would be held past that
        is dropped, and counted (``datagrams_dropped_by_reason["hold-full"]``)
    :param seed: seeds the draws; the same seed and the same sequence of
        datagrams give the same impairments. ``None`` draws a different pattern
        on every run.

    .. code-block:: python

        udp = UdpFaults(drop=0.1, duplicate=0.05, reorder=0.1, seed=1)
        server = anyecho.EchoServer(port=0, udp=True, udp_faults=udp)
    """

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_hold: float = 1.0
    corrupt: float = 0.0
    delay: UdpDelay = 0.0
    delay_fraction: float = 1.0
    max_held: int = 1000
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder", "corrupt", "delay_fraction"):
            object.__setattr__(
                self, name, check_share(f"UDP {name}", getattr(self, name))
            )
        object.__setattr__(self, "delay", check_delay(self.delay, "UDP delay"))
        hold = check_seconds("UDP reorder_hold", self.reorder_hold)
        object.__setattr__(self, "reorder_hold", hold)
        held: object = self.max_held
        if isinstance(held, bool) or not isinstance(held, int) or held < 1:
            raise ValueError(f"invalid UDP max_held {held!r}: expected an integer >= 1")
        seed: object = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"invalid UDP seed {seed!r}: expected an integer")

    @classmethod
    def from_json(cls, value: object) -> UdpFaults:
        """Build one from a decoded JSON object (field names as keys).

        :raises ValueError: for a value that is not an object, an unknown field,
            or an invalid value
        """
        if not isinstance(value, Mapping):
            raise ValueError(  # noqa: TRY004 (bad input: one-line ValueError)
                f"invalid udp faults {value!r}: expected an object of field names"
            )
        known = {field.name for field in fields(cls)}
        unknown = sorted(str(key) for key in value if key not in known)
        if unknown:
            raise ValueError(
                f"unknown UDP fault field(s) {', '.join(unknown)}: expected "
                f"{', '.join(sorted(known))}"
            )
        return cls(**{str(key): item for key, item in value.items()})

    @property
    def max_delay(self) -> float:
        return self.delay[1] if isinstance(self.delay, tuple) else self.delay

    @property
    def active(self) -> bool:
        """Whether any impairment can strike."""
        delayed = self.max_delay > 0 and self.delay_fraction > 0
        return delayed or any((self.drop, self.duplicate, self.reorder, self.corrupt))

    def decide(self, rng: random.Random, size: int) -> UdpFate:
        """One datagram's fate: eight draws from ``rng``, whatever the outcome."""
        draw = rng.random
        drop, duplicate, reorder, corrupt, where, mask, delayed, length = (
            draw() for _ in range(8)
        )
        delay = 0.0
        if delayed < self.delay_fraction:
            low, high = (
                self.delay if isinstance(self.delay, tuple) else (self.delay,) * 2
            )
            delay = low + (high - low) * length
        return UdpFate(
            drop=drop < self.drop,
            duplicate=duplicate < self.duplicate,
            reorder=reorder < self.reorder,
            corrupt_at=int(where * size) if size and corrupt < self.corrupt else None,
            corrupt_mask=1 + int(mask * 255),
            delay=delay,
        )

    def describe(self) -> str:
        """One line for a log: ``drop 10%, duplicate 5%; seed 1``."""
        parts = [
            f"{name} {getattr(self, name):.4g}"
            for name in ("drop", "duplicate", "reorder", "corrupt")
            if getattr(self, name)
        ]
        if self.max_delay and self.delay_fraction:
            low, high = (
                self.delay if isinstance(self.delay, tuple) else (self.delay,) * 2
            )
            span = f"{low:g}s" if low == high else f"{low:g}-{high:g}s"
            share = "" if self.delay_fraction == 1 else f" of {self.delay_fraction:g}"
            parts.append(f"delay {span}{share}")
        text = ", ".join(parts) or "none"
        return text if self.seed is None else f"{text} (seed {self.seed})"


def udp_faults_from(value: object) -> UdpFaults | None:
    """``value`` as a :class:`UdpFaults`: one already, a JSON object, or ``None``."""
    if value is None or isinstance(value, UdpFaults):
        return value
    return UdpFaults.from_json(value)
