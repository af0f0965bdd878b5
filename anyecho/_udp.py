"""RFC 862 datagram echo, with a guard against reflection and amplification.

An echo service that answers any datagram can be pointed at another UDP service by
forging the source address: two echo services answering each other, or echo
against chargen, loop forever (CERT CA-1996-01), and a forged victim address turns
the server into a reflector. So the datagram echo is off unless asked for, never
answers source port 0 or a well-known service port, and limits, per source
address, both the packets and the bytes it sends back.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import math
import random
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from ._config import RateLimit
from ._proxy import ProxyHeaderError, parse
from ._stats import ServerStats
from ._udpfaults import UdpFaults

__all__ = [
    "BLOCKED_PORT",
    "NO_SOURCE_ADDRESS",
    "RATE_LIMIT",
    "SEND_BUFFER_FULL",
    "SEND_ERROR",
    "UNTRUSTED_SOURCE",
    "UDPFaultState",
    "UDPGuard",
]

logger = logging.getLogger("anyecho")

# Why a datagram went unanswered: the keys of
# StatsSnapshot.datagrams_dropped_by_reason.
BLOCKED_PORT = "blocked-port"
RATE_LIMIT = "rate-limit"
SEND_BUFFER_FULL = "send-buffer-full"
SEND_ERROR = "send-error"
NO_SOURCE_ADDRESS = "no-source-address"
FAULT = "fault"
HOLD_FULL = "hold-full"
STOPPED = "stopped"
UNTRUSTED_SOURCE = "untrusted-source"
PROXY_HEADER = "proxy-header"

#: The most bytes of datagrams held at once for delays and reordering, per socket.
MAX_HELD_BYTES = 16 * 1024 * 1024

#: Datagrams read per wake-up. After this many the loop waits for readiness
#: again, which lets every other task run: a flood cannot starve the TCP side.
_BATCH = 64

#: More than any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6).
_BUFFER_SIZE = 65536

#: Errors that mean the socket itself is gone, not one datagram.
_SOCKET_GONE = frozenset({errno.EBADF, errno.ENOTSOCK})

_MSG_ERRQUEUE: int = getattr(socket, "MSG_ERRQUEUE", 0)


class _Buckets:
    """Two token buckets (packets and bytes) for one source address."""

    __slots__ = ("bytes", "packets", "updated")

    def __init__(self, packets: float, data: float, now: float) -> None:
        self.packets = packets
        self.bytes = data
        self.updated = now


class UDPGuard:
    """Decides, per datagram, whether answering it is safe.

    :param blocked_ports: source ports never answered
    :param packets: per-source packet rate limit
    :param data: per-source byte rate limit
    :param max_sources: how many source addresses to track; the least recently
        seen is forgotten first, so a flood of forged sources costs bounded memory
    """

    def __init__(
        self,
        *,
        blocked_ports: frozenset[int],
        packets: RateLimit,
        data: RateLimit,
        max_sources: int = 65536,
    ) -> None:
        self.blocked_ports = blocked_ports
        self.packets = packets
        self.data = data
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Buckets] = OrderedDict()

    def check(self, host: str, port: int, size: int, now: float) -> str | None:
        """``None`` if the datagram may be answered, else why not."""
        if port == 0 or port in self.blocked_ports:
            return BLOCKED_PORT
        buckets = self._sources.get(host)
        if buckets is None:
            buckets = _Buckets(self.packets.burst, self.data.burst, now)
            self._sources[host] = buckets
            if len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(host)
            elapsed = now - buckets.updated
            buckets.updated = now
            buckets.packets = min(
                self.packets.burst, buckets.packets + elapsed * self.packets.rate
            )
            buckets.bytes = min(
                self.data.burst, buckets.bytes + elapsed * self.data.rate
            )
        if buckets.packets < 1 or buckets.bytes < size:
            return RATE_LIMIT
        buckets.packets -= 1
        buckets.bytes -= size
        return None


class _Sender(Protocol):
    def sendto(self, data: bytes | memoryview, address: Any, /) -> int: ...


class UDPFaultState:
    """The UDP impairments in force on one server: swapped while it serves.

    The server's ``set_udp_faults`` (and whatever replaces its faults at run
    time) calls :meth:`set`; every UDP socket of the server reads :attr:`faults`
    afresh for each datagram, so a change applies from the next datagram on.
    Datagrams already held for a delay or a reorder still go out as decided.
    """

    __slots__ = ("faults", "rng")

    def __init__(self, faults: UdpFaults | None = None) -> None:
        self.faults: UdpFaults | None = None
        self.rng = random.Random()  # noqa: S311
        self.set(faults)

    def set(self, faults: UdpFaults | None) -> None:
        """Impair from now on as ``faults`` says (``None``: no more impairments).

        Each call starts a new ``random.Random(faults.seed)``: setting the same
        faults again replays the same impairments on the datagrams that follow.
        """
        self.faults = faults if faults is not None and faults.active else None
        self.rng = random.Random(None if faults is None else faults.seed)  # noqa: S311


class _Held:
    """A datagram held back by an impairment, with the answers it is due."""

    __slots__ = ("address", "copies", "data", "sent")

    def __init__(self, data: bytes, address: Any, copies: int) -> None:
        self.data = data
        self.address = address
        self.copies = copies
        self.sent = False


class _Responder:
    """Answers one datagram, or counts it as dropped and why. Never raises OSError.

    It sends on a non-blocking socket and never waits: an answer the send buffer
    has no room for is dropped (``send-buffer-full``) rather than queued, so a
    flood costs no memory here, and the receive side never stalls behind a send.

    With impairments (``faults``), the datagrams a delay or a reorder holds back
    wait in memory bounded by ``max_held`` and :data:`MAX_HELD_BYTES`; the
    :meth:`release` task sends them when due, on AnyIO's clock.
    """

    __slots__ = (
        "_clock",
        "_due",
        "_guard",
        "_held_bytes",
        "_held_count",
        "_order",
        "_proxied",
        "_reordered",
        "_sock",
        "_stats",
        "_wake",
        "faults",
    )

    def __init__(
        self,
        sock: _Sender,
        guard: UDPGuard,
        stats: ServerStats,
        clock: Callable[[], float],
        *,
        faults: UDPFaultState | None = None,
        proxied: Callable[[Any], bool] | None = None,
    ) -> None:
        self._sock = sock
        self._guard = guard
        self._stats = stats
        self._clock = clock
        self.faults = faults
        self._proxied = proxied
        #: held datagrams by the time they are due: (due, order, datagram)
        self._due: list[tuple[float, int, _Held]] = []
        self._order = itertools.count()
        #: reordered datagrams waiting for a later answer, by address
        self._reordered: dict[Any, list[_Held]] = {}
        self._held_bytes = 0
        #: datagrams held now (those queued less those already sent)
        self._held_count = 0
        self._wake: anyio.Event | None = None

    def answer(self, data: bytes | memoryview, address: Any) -> None:
        stats = self._stats
        if not isinstance(address, tuple) or len(address) < 2:
            stats.bytes_received += len(data)
            stats.drop_datagram(NO_SOURCE_ADDRESS)
            logger.debug(
                "udp: dropped %d bytes from %r (no address)", len(data), address
            )
            return
        host, port = address[0], address[1]
        if self._proxied is not None:
            client = self._unwrap(data, address)
            if client is None:
                return
            data, (host, port) = client
        size = len(data)
        stats.bytes_received += size
        reason = self._guard.check(host, port, size, self._clock())
        if reason is not None:
            stats.drop_datagram(reason)
            logger.debug("udp %s:%d: dropped %d bytes (%s)", host, port, size, reason)
            return
        state = self.faults
        if state is not None and state.faults is not None:
            self._impair(state.faults, state.rng, data, address)
            return
        self._send(data, address)
        if self._reordered:  # held back before the impairments were cleared
            self._release_after(address)

    def _unwrap(
        self, data: bytes | memoryview, address: Any
    ) -> tuple[bytes | memoryview, tuple[str, int]] | None:
        """The payload of a datagram behind a PROXY v2 header, and the client
        the guard judges it by; ``None`` (counted) to drop it."""
        assert self._proxied is not None
        header = None
        reason = UNTRUSTED_SOURCE
        if self._proxied(address):
            reason = PROXY_HEADER
            with contextlib.suppress(ProxyHeaderError):
                header = parse(data)  # None: cut short, as good as malformed
        if header is None:
            self._stats.bytes_received += len(data)
            self._stats.drop_datagram(reason)
            logger.debug("udp %s:%d: dropped (%s)", address[0], address[1], reason)
            return None
        source = header.source
        client = source if isinstance(source, tuple) else (address[0], address[1])
        return data[header.length :], client

    def _send(self, data: bytes | memoryview, address: Any, copies: int = 1) -> None:
        """Send one answer (and its duplicate), counting what became of it."""
        stats = self._stats
        try:
            sent = self._sock.sendto(data, address)
        except OSError as exc:
            full = isinstance(exc, BlockingIOError) or exc.errno == errno.ENOBUFS
            reason = SEND_BUFFER_FULL if full else SEND_ERROR
            stats.drop_datagram(reason)
            logger.debug(
                "udp %s:%d: dropped %d bytes (%s: %s)",
                address[0],
                address[1],
                len(data),
                reason,
                exc,
            )
            return
        stats.datagrams_echoed += 1
        stats.bytes_sent += sent
        if copies > 1:
            try:
                sent = self._sock.sendto(data, address)
            except OSError as exc:  # the original went out: nothing is lost
                logger.debug("udp: duplicate not sent (%s)", exc)
            else:
                stats.bytes_sent += sent
                stats.udp_fault("duplicate")

    # --- impairments ------------------------------------------------------------

    def _impair(
        self,
        faults: UdpFaults,
        rng: random.Random,
        view: bytes | memoryview,
        address: Any,
    ) -> None:
        stats = self._stats
        fate = faults.decide(rng, len(view))
        if fate.drop:
            stats.udp_fault("drop")
            stats.drop_datagram(FAULT)
            return
        data: bytes | memoryview = view
        if fate.corrupt_at is not None:
            changed = bytearray(view)
            changed[fate.corrupt_at] ^= fate.corrupt_mask
            data = bytes(changed)
            stats.udp_fault("corrupt")
        copies = 2 if fate.duplicate else 1
        if not fate.reorder and not fate.delay:
            self._send(data, address, copies)
            self._release_after(address)
            return
        if (
            stats.datagrams_held >= faults.max_held
            or self._held_bytes + len(data) > MAX_HELD_BYTES
        ):
            stats.drop_datagram(HOLD_FULL)
            return
        held = _Held(bytes(data), address, copies)
        stats.datagrams_held += 1
        self._held_count += 1
        self._held_bytes += len(held.data)
        now = self._clock()
        if fate.reorder:
            self._reordered.setdefault(address, []).append(held)
            self._schedule(now + faults.reorder_hold, held)
        else:
            stats.udp_fault("delay")
            self._schedule(now + fate.delay, held)

    def _schedule(self, due: float, held: _Held) -> None:
        queue = self._due
        heapq.heappush(queue, (due, next(self._order), held))
        if len(queue) > 2 * self._held_count + 64:
            # Reorders overtaken early leave their deadlines behind: drop those,
            # so that the queue stays within a few times what is really held.
            queue[:] = [entry for entry in queue if not entry[2].sent]
            heapq.heapify(queue)
        if self._wake is not None:
            self._wake.set()

    def _emit(self, held: _Held, *, overtaken: bool = False) -> None:
        """Send a held datagram now (once: later calls do nothing)."""
        if held.sent:
            return
        held.sent = True
        self._stats.datagrams_held -= 1
        self._held_count -= 1
        self._held_bytes -= len(held.data)
        self._send(held.data, held.address, held.copies)
        held.data = b""  # its deadline may stay queued a while: keep no bytes
        if overtaken:
            self._stats.udp_fault("reorder")

    def _release_after(self, address: Any) -> None:
        """Send the datagrams held back for a reorder behind an answer just sent."""
        waiting = self._reordered.pop(address, None)
        if waiting:
            for held in waiting:
                self._emit(held, overtaken=True)

    async def release(self) -> None:
        """Send each held datagram when due, until cancelled.

        Whatever is still held when it is cancelled (the server stops) is counted
        as dropped (``stopped``).
        """
        due = self._due
        try:
            while True:
                now = self._clock()
                while due and due[0][0] <= now:
                    held = heapq.heappop(due)[2]
                    if held.sent:
                        continue
                    waiting = self._reordered.get(held.address)
                    if waiting is not None and held in waiting:
                        # A reorder that nothing overtook goes out on its own:
                        # only late, so counted as a delay.
                        waiting.remove(held)
                        if not waiting:
                            del self._reordered[held.address]
                        self._emit(held)
                        self._stats.udp_fault("delay")
                    else:
                        self._emit(held)
                        self._release_after(held.address)
                self._stats.changed()
                self._wake = anyio.Event()
                with anyio.CancelScope(deadline=due[0][0] if due else math.inf):
                    await self._wake.wait()
                self._wake = None
        finally:
            for _, _, held in due:
                if not held.sent:
                    held.sent = True
                    self._stats.datagrams_held -= 1
                    self._stats.drop_datagram(STOPPED)
            due.clear()
            self._reordered.clear()
            self._held_bytes = self._held_count = 0


def _receive_failed(sock: socket.socket, stats: ServerStats, exc: Exception) -> None:
    """Count an error the system reported instead of a datagram, and carry on.

    Such errors belong to an earlier send, not to the socket: an ICMP port
    unreachable drawn by an answer to a client gone since surfaces as
    ``ConnectionRefusedError`` on the next receive (on Linux with ``IP_RECVERR``;
    on other systems on any unconnected socket).
    """
    stats.error("udp receive")
    logger.debug("udp: receive failed (%s)", exc)
    if _MSG_ERRQUEUE:
        # With IP_RECVERR, Linux also queues the error, and the socket polls as
        # in error (so as readable) until it is read: a readiness loop would spin.
        for _ in range(_BATCH):
            try:
                sock.recvmsg(1, 1024, _MSG_ERRQUEUE)
            except OSError:
                break


async def serve_udp(
    sock: socket.socket,
    guard: UDPGuard,
    stats: ServerStats,
    faults: UDPFaultState | None = None,
    proxied: Callable[[Any], bool] | None = None,
) -> None:
    """Echo datagrams on ``sock`` until cancelled or the socket is closed.

    Every datagram the system delivers is either answered (``datagrams_echoed``)
    or counted in ``datagrams_dropped`` with its reason; an error the system
    reports for one datagram or peer never stops the service. It serves from the
    socket itself, on every backend: it waits until the socket is readable, then
    reads and answers up to a batch, non-blocking. (AnyIO's asyncio UDP sockets
    queue at most 100 received datagrams and silently drop the rest, and asyncio
    and uvloop silently skip sending empty datagrams.) Whoever closes ``sock``
    calls :func:`anyio.notify_closing` first, which ends this at once.

    :param faults: the impairments to apply, read for each datagram (see
        :class:`UDPFaultState`); a task beside the receive loop sends the
        datagrams they hold back
    :param proxied: says whether a sender is a trusted proxy. With it, every
        datagram must come from a trusted proxy and start with a PROXY header (v2
        over ``DGRAM``, as the protocol defines it): the guard judges the client
        it names, and the payload after it goes back to the proxy.
    """
    sock.setblocking(False)
    responder = _Responder(
        sock, guard, stats, anyio.current_time, faults=faults, proxied=proxied
    )
    if faults is None:
        await _receive(sock, responder, stats)
        return
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(responder.release)
        await _receive(sock, responder, stats)
        tasks.cancel_scope.cancel()


async def _receive(
    sock: socket.socket, responder: _Responder, stats: ServerStats
) -> None:
    answer = responder.answer
    buffer = bytearray(_BUFFER_SIZE)
    view = memoryview(buffer)
    receive = sock.recvfrom_into
    while sock.fileno() >= 0:
        try:
            await anyio.wait_readable(sock)
        except anyio.ClosedResourceError:
            return  # closed while we waited: the server is stopping
        for _ in range(_BATCH):
            try:
                size, address = receive(buffer)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _SOCKET_GONE:
                    return
                _receive_failed(sock, stats, exc)
                continue
            answer(view[:size], address)
        stats.changed()
