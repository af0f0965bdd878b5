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
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from ._config import RateLimit
from ._proxy import ProxyHeaderError, parse
from ._stats import ServerStats

__all__ = [
    "BLOCKED_PORT",
    "NO_SOURCE_ADDRESS",
    "PROXY_HEADER",
    "RATE_LIMIT",
    "SEND_BUFFER_FULL",
    "SEND_ERROR",
    "UNTRUSTED_SOURCE",
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
UNTRUSTED_SOURCE = "untrusted-source"
PROXY_HEADER = "proxy-header"

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


class _Responder:
    """Answers one datagram, or counts it as dropped and why. Never raises OSError.

    It sends on a non-blocking socket and never waits: an answer the send buffer
    has no room for is dropped (``send-buffer-full``) rather than queued, so a
    flood costs no memory here, and the receive side never stalls behind a send.
    """

    __slots__ = ("_clock", "_guard", "_proxied", "_sock", "_stats")

    def __init__(
        self,
        sock: _Sender,
        guard: UDPGuard,
        stats: ServerStats,
        clock: Callable[[], float],
        proxied: Callable[[Any], bool] | None = None,
    ) -> None:
        self._sock = sock
        self._guard = guard
        self._stats = stats
        self._clock = clock
        self._proxied = proxied

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
        if reason is None:
            try:
                sent = self._sock.sendto(data, address)
            except OSError as exc:
                full = isinstance(exc, BlockingIOError) or exc.errno == errno.ENOBUFS
                reason = SEND_BUFFER_FULL if full else SEND_ERROR
                logger.debug("udp %s:%d: send failed (%s)", host, port, exc)
            else:
                stats.datagrams_echoed += 1
                stats.bytes_sent += sent
                return
        stats.drop_datagram(reason)
        logger.debug("udp %s:%d: dropped %d bytes (%s)", host, port, size, reason)

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

    With ``proxied`` (which says whether a sender is a trusted proxy), every
    datagram must come from a trusted proxy and start with a PROXY header (v2
    over ``DGRAM``, as the protocol defines it): the guard judges the client
    it names, and the payload after it goes back to the proxy.
    """
    sock.setblocking(False)
    answer = _Responder(sock, guard, stats, anyio.current_time, proxied).answer
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
