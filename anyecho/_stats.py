"""Counters a running server keeps, and the snapshots it hands out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import anyio

from ._echo import ByteCounts
from ._errors import ErrorKind

__all__ = ["ServerStats", "StatsSnapshot"]


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
        it), ``no-source-address`` (the system gave no address to answer)
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
        faults = sorted(self.faults_injected.items())
        if faults:
            line += ", faults injected: " + ", ".join(f"{k} {n}" for k, n in faults)
        return f"{line}, errors: {errors or 'none'}"


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
        self.error(kind)

    def opened(self, number: int, counter: ByteCounts) -> None:
        """Count a connection served, and register it under its id, ``number``.

        Its bytes are read from ``counter`` until :meth:`closed`.
        """
        self.total_connections += 1
        self.open[number] = counter
        self.changed()

    def closed(self, number: int) -> None:
        """Fold a connection's bytes into the totals, and forget it."""
        counter = self.open.pop(number)
        self.bytes_received += counter.received
        self.bytes_sent += counter.sent
        self.changed()

    def drop_datagram(self, reason: str) -> None:
        """Count one datagram received and not answered, and why."""
        self.datagrams_dropped += 1
        self.datagrams_dropped_by_reason[reason] += 1

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
        )
