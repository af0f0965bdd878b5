"""Counters a running server keeps, and the snapshots it hands out."""

from __future__ import annotations

import bisect
import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import anyio

from ._echo import ByteCounts
from ._errors import ErrorKind

__all__ = [
    "DURATION_BUCKETS",
    "DurationHistogram",
    "ServerState",
    "ServerStats",
    "StatsSnapshot",
    "combine",
]

#: Where a server is in its life: not listening yet, accepting, stopping (no
#: longer ready: a load balancer should send no new clients, while the open
#: connections finish), stopped.
ServerState = Literal["starting", "serving", "draining", "stopped"]

#: The upper bounds (seconds) of the connection duration histogram's buckets:
#: fixed, so that every server and every worker counts into the same ones and
#: their counts add up.
DURATION_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


@dataclass(frozen=True)
class DurationHistogram:
    """How long the closed connections lasted, in fixed buckets.

    :param counts: connections per bucket, not cumulative: ``counts[i]`` lasted
        more than ``bounds[i - 1]`` and at most ``bounds[i]`` seconds; the last
        one, longer than every bound
    :param sum: their total duration in seconds
    :param bounds: the buckets' upper bounds, in seconds: the same for every
        server (1 ms to 1 hour), so that counts add up
    """

    counts: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    sum: float = 0.0
    bounds: tuple[float, ...] = DURATION_BUCKETS

    @property
    def count(self) -> int:
        """The number of connections observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, connections at most that long)``, ending with infinity."""
        total = 0
        buckets = []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            buckets.append((bound, total))
        return buckets


@dataclass(frozen=True)
class StatsSnapshot:
    """The server's counters at one moment. All counts are since the server started.

    :param active_connections: stream connections open now
    :param total_connections: stream connections accepted
    :param bytes_received: bytes received, over streams and datagrams
    :param bytes_sent: bytes echoed back, over streams and datagrams
    :param datagrams_echoed: UDP datagrams echoed
    :param datagrams_dropped: UDP datagrams received but not answered: the sum of
        :attr:`datagrams_dropped_by_reason`
    :param errors: errors by kind, 0 for kinds not seen (``accept``, ``reset``,
        ``handler``, ``tls``,
        ``timeout``, ``udp receive``, ...)
    :param faults_injected: faults injected on purpose, by kind, 0 for kinds not
        seen; they are not errors. Each event counts once: ``reset``, ``close``
        and ``stall`` (a connection cut short), ``refuse`` and ``blackhole`` (a
        connection accepted and reset, or never answered), ``slow_close`` (an
        end of stream held back); the stream faults (``delay``, ``fragment``,
        ``throttle``, ``read_delay``, ``read_throttle``) count the connections
        they were applied to, again each time the faults change
    :param datagrams_dropped_by_reason: UDP datagrams not answered, by reason:
        ``blocked-port`` (a source port the reflection guard never answers),
        ``rate-limit`` (the source's packet or byte budget is spent),
        ``send-buffer-full`` (the socket's send buffer had no room: the answer is
        dropped rather than queued), ``send-error`` (the system refused to send
        it), ``no-source-address`` (the system gave no address to answer),
        ``fault`` (dropped on purpose by a UDP ``drop`` impairment),
        ``hold-full`` (an impairment would have held more datagrams than
        ``max_held``), ``stopped`` (held for an impairment when the server
        stopped); with the PROXY protocol on, ``untrusted-source`` (not from a
        trusted proxy) and ``proxy-header`` (no valid header at its start)
    :param udp_faults_injected: UDP impairments injected, by kind (``drop``,
        ``duplicate``, ``reorder``, ``delay``, ``corrupt``), 0 for kinds not seen:
        see :class:`~anyecho.faults.UdpFaults`
    :param datagrams_held: UDP datagrams held right now for a delay or a reorder
        (neither echoed nor dropped yet)
    :param refused_by_reason: stream connections accepted and closed at once,
        without an echo, by reason: ``source-limit`` (reset past the per-source
        limit with no room to wait), ``reset`` (a waiter whose peer had gone);
        they count in :attr:`total_connections` and :attr:`errors` too
    :param connection_durations: how long the closed connections lasted
    :param open_by_source: the open stream connections by client address, where
        the per-source limit counts them (behind a proxy: the address its PROXY
        header named); an address with no connection open is absent, so this
        holds at most as many entries as connections are open
    :param state: ``starting`` (not listening yet), ``serving`` (accepting),
        ``draining`` (a stop has begun: not ready for new clients while the
        open connections finish) or ``stopped``
    """

    active_connections: int = 0
    total_connections: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    datagrams_echoed: int = 0
    datagrams_dropped: int = 0
    errors: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    faults_injected: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    datagrams_dropped_by_reason: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    udp_faults_injected: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    datagrams_held: int = 0
    open_by_source: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    refused_by_reason: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    connection_durations: DurationHistogram = field(default_factory=DurationHistogram)
    state: ServerState = "starting"

    @property
    def refused_connections(self) -> int:
        """Connections accepted and closed at once: the sum of
        :attr:`refused_by_reason`."""
        return sum(self.refused_by_reason.values())

    def to_json(self) -> str:
        """The snapshot as one line of JSON (:meth:`from_json` reads it back)."""
        data: dict[str, Any] = {
            name: getattr(self, name) for name in _PLAIN_FIELDS + _MAP_FIELDS
        }
        for name in _MAP_FIELDS:
            data[name] = dict(data[name])
        histogram = self.connection_durations
        data["connection_durations"] = {
            "counts": list(histogram.counts),
            "sum": histogram.sum,
            "bounds": list(histogram.bounds),
        }
        data["state"] = self.state
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> StatsSnapshot:
        """A snapshot from :meth:`to_json`'s output (``ValueError`` if malformed)."""
        try:
            data = json.loads(text)
            plain = {name: int(data[name]) for name in _PLAIN_FIELDS}
            maps = {
                name: MappingProxyType({str(k): int(v) for k, v in data[name].items()})
                for name in _MAP_FIELDS
            }
            hist = data["connection_durations"]
            histogram = DurationHistogram(
                tuple(int(n) for n in hist["counts"]),
                float(hist["sum"]),
                tuple(float(b) for b in hist["bounds"]),
            )
            state = data["state"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed stats snapshot: {exc}") from exc
        if state not in _STATES or len(histogram.counts) != len(histogram.bounds) + 1:
            raise ValueError("malformed stats snapshot")
        return _make(plain, maps, histogram, state)

    def summary(self) -> str:
        """One line for a log, such as ``connections 3 active / 120 total, ...``.

        Injected faults have their own part (``faults injected: reset 2``),
        before the errors.
        """
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted(self.errors.items()))
        line = (
            f"connections {self.active_connections} active / "
            f"{self.total_connections} total, "
            f"bytes {self.bytes_received} in / {self.bytes_sent} out"
        )
        if self.datagrams_echoed or self.datagrams_dropped:
            line += (
                f", datagrams {self.datagrams_echoed} echoed / "
                f"{self.datagrams_dropped} dropped"
            )
            reasons = sorted(self.datagrams_dropped_by_reason.items())
            if reasons:
                line += " (" + ", ".join(f"{why} {n}" for why, n in reasons) + ")"
        injected = sorted(self.udp_faults_injected.items())
        if injected:
            line += ", udp faults: " + ", ".join(f"{k} {n}" for k, n in injected)
        faults = sorted(self.faults_injected.items())
        if faults:
            line += ", faults injected: " + ", ".join(f"{k} {n}" for k, n in faults)
        return f"{line}, errors: {errors or 'none'}"


# The snapshot's counts and its counts by kind, as its fields declare them: what
# travels from a worker to its supervisor and adds up across workers.
_PLAIN_FIELDS: Final = tuple(
    f.name for f in dataclasses.fields(StatsSnapshot) if f.type == "int"
)
_MAP_FIELDS: Final = tuple(
    f.name for f in dataclasses.fields(StatsSnapshot) if f.type == "Mapping[str, int]"
)
_STATES: Final = ("starting", "serving", "draining", "stopped")


def combine(
    snapshots: Iterable[StatsSnapshot], state: ServerState = "serving"
) -> StatsSnapshot:
    """The sum of several servers' counters (the workers of one service).

    Counts, maps and histograms add up; ``state`` is the service's own.
    """
    plain = dict.fromkeys(_PLAIN_FIELDS, 0)
    maps: dict[str, Counter[str]] = {name: Counter() for name in _MAP_FIELDS}
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    total = 0.0
    for snapshot in snapshots:
        for name in _PLAIN_FIELDS:
            plain[name] += getattr(snapshot, name)
        for name in _MAP_FIELDS:
            maps[name].update(getattr(snapshot, name))
        histogram = snapshot.connection_durations
        if histogram.bounds == DURATION_BUCKETS:
            counts = [a + b for a, b in zip(counts, histogram.counts, strict=True)]
            total += histogram.sum
    return _make(
        plain,
        {name: MappingProxyType(dict(c)) for name, c in maps.items()},
        DurationHistogram(tuple(counts), total),
        state,
    )


def _make(
    plain: Mapping[str, int],
    maps: Mapping[str, Mapping[str, int]],
    histogram: DurationHistogram,
    state: ServerState,
) -> StatsSnapshot:
    return StatsSnapshot(
        active_connections=plain["active_connections"],
        total_connections=plain["total_connections"],
        bytes_received=plain["bytes_received"],
        bytes_sent=plain["bytes_sent"],
        datagrams_echoed=plain["datagrams_echoed"],
        datagrams_dropped=plain["datagrams_dropped"],
        errors=maps["errors"],
        datagrams_dropped_by_reason=maps["datagrams_dropped_by_reason"],
        refused_by_reason=maps["refused_by_reason"],
        connection_durations=histogram,
        state=state,
    )


class ServerStats:
    """Live counters of one server.

    Per-connection byte counts live on each connection (one integer add per chunk,
    no shared state on the hot path) and are folded in here when it closes;
    :meth:`snapshot` adds up the open ones.
    """

    def __init__(self) -> None:
        self.total_connections = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.datagrams_echoed = 0
        self.datagrams_dropped = 0
        self.datagrams_dropped_by_reason: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.udp_faults_injected: Counter[str] = Counter()
        #: UDP datagrams held for an impairment now
        self.datagrams_held = 0
        #: open connections per source address (the admission's own counts)
        self.open_by_source: dict[str, int] = {}
        self.refused_by_reason: Counter[str] = Counter()
        #: the closed connections' durations: counts per bucket, and their sum
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.state: ServerState = "starting"
        self.faults_injected: Counter[str] = Counter()
        #: the open connections' own counters, by connection id: the one registry
        #: of open connections (the connections' own records are kept here)
        self.open: dict[int, ByteCounts] = {}
        self._changed: anyio.Event | None = None

    def changed(self) -> None:
        """Wake the tasks in :meth:`wait_until` (after a connection ends, and so on).

        Cheap when nobody waits: one attribute test.
        """
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    async def wait_until(
        self, predicate: Callable[[StatsSnapshot], bool]
    ) -> StatsSnapshot:
        """Wait until ``predicate(snapshot)`` holds; return that snapshot."""
        while True:
            snapshot = self.snapshot()
            if predicate(snapshot):
                return snapshot
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def error(self, kind: ErrorKind) -> None:
        """Count one error of ``kind``."""
        self.errors[kind] += 1
        self.changed()

    def fault(self, kind: str) -> None:
        """Count one fault injected on purpose, of ``kind``."""
        self.faults_injected[kind] += 1
        self.changed()

    def turned_away(self, kind: ErrorKind) -> None:
        """Count a connection accepted and closed at once, and why."""
        self.total_connections += 1
        self.refused_by_reason[kind] += 1
        self.error(kind)

    def opened(self, number: int, counter: ByteCounts) -> None:
        """Count a connection served, and register it under its id, ``number``.

        Its bytes are read from ``counter`` until :meth:`closed`.
        """
        self.total_connections += 1
        self.open[number] = counter
        self.changed()

    def closed(self, number: int, duration: float = 0.0) -> None:
        """Fold a connection's bytes into the totals, and its duration (seconds);
        forget it."""
        counter = self.open.pop(number)
        self.bytes_received += counter.received
        self.bytes_sent += counter.sent
        self.duration_counts[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.changed()

    def drop_datagram(self, reason: str) -> None:
        """Count one datagram received and not answered, and why."""
        self.datagrams_dropped += 1
        self.datagrams_dropped_by_reason[reason] += 1
        self.changed()

    def set_state(self, state: ServerState) -> None:
        self.state = state
        self.changed()

    def udp_fault(self, kind: str) -> None:
        """Count one UDP impairment of ``kind`` (``drop``, ``duplicate``, ...)."""
        self.udp_faults_injected[kind] += 1

    def snapshot(self) -> StatsSnapshot:
        counters = self.open.values()
        received = self.bytes_received + sum(c.received for c in counters)
        sent = self.bytes_sent + sum(c.sent for c in counters)
        return StatsSnapshot(
            active_connections=len(self.open),
            total_connections=self.total_connections,
            bytes_received=received,
            bytes_sent=sent,
            datagrams_echoed=self.datagrams_echoed,
            datagrams_dropped=self.datagrams_dropped,
            errors=MappingProxyType(Counter(self.errors)),
            faults_injected=MappingProxyType(Counter(self.faults_injected)),
            datagrams_dropped_by_reason=MappingProxyType(
                Counter(self.datagrams_dropped_by_reason)
            ),
            udp_faults_injected=MappingProxyType(Counter(self.udp_faults_injected)),
            open_by_source=MappingProxyType(dict(self.open_by_source)),
            datagrams_held=self.datagrams_held,
            refused_by_reason=MappingProxyType(Counter(self.refused_by_reason)),
            connection_durations=DurationHistogram(
                tuple(self.duration_counts), self.duration_sum
            ),
            state=self.state,
        )
