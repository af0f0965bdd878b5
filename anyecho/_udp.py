"""RFC 862 datagram echo, with a guard against reflection and amplification.

An echo service that answers any datagram can be pointed at another UDP service by
forging the source address: two echo services answering each other, or echo
against chargen, loop forever (CERT CA-1996-01), and a forged victim address turns
the server into a reflector. So the datagram echo is off unless asked for, never
answers source port 0 or a well-known service port, and limits, per source
address, both the packets and the bytes it sends back.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

import anyio
from anyio.abc import UDPSocket

from ._stats import ServerStats

__all__ = ["DEFAULT_UDP_BLOCKED_PORTS", "RateLimit", "UDPGuard", "parse_port_set"]

logger = logging.getLogger("anyecho")

#: Source ports never answered: 0 (not a real port), every well-known port (0-1023:
#: echo 7, discard 9, daytime 13, qotd 17, chargen 19, time 37, DNS 53, NTP 123,
#: SNMP 161, ...), and registered ports of services known to reflect or amplify
#: (SSDP 1900, Apple Remote Desktop 3283, WS-Discovery 3702, mDNS 5353, CoAP 5683,
#: memcached 11211).
DEFAULT_UDP_BLOCKED_PORTS: frozenset[int] = frozenset(
    {*range(1024), 1900, 3283, 3702, 5353, 5683, 11211}
)


def parse_port_set(text: str) -> frozenset[int]:
    """Parse ``"0-1023,1900,5353"`` into a set of ports (``ValueError`` if bad)."""
    ports: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise ValueError(f"invalid port list item {item!r}: expected N or N-M")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 0 <= low <= high <= 65535:
            raise ValueError(
                f"invalid port range {item!r}: expected 0 <= N <= M <= 65535"
            )
        ports.update(range(low, high + 1))
    return frozenset(ports)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket's settings: a sustained rate and the burst it allows."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst > 0):
            raise ValueError(f"invalid rate limit {self.rate}/s, burst {self.burst}")


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
            return "blocked source port"
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
            return "rate limit"
        buckets.packets -= 1
        buckets.bytes -= size
        return None


async def serve_udp(sock: UDPSocket, guard: UDPGuard, stats: ServerStats) -> None:
    """Echo datagrams on ``sock`` until cancelled or the socket is closed.

    A failed receive or send costs that datagram only: an error the OS reports
    for one datagram (an ICMP error, a full buffer) never stops the service.
    """
    clock = anyio.current_time
    while True:
        try:
            data, (host, port) = await sock.receive()
        except anyio.ClosedResourceError:
            return
        except anyio.BrokenResourceError as exc:
            if not isinstance(exc.__cause__, OSError):
                return  # the transport itself is gone
            stats.errors["udp receive"] += 1
            logger.debug("udp: receive failed (%s)", exc.__cause__)
            continue
        size = len(data)
        stats.bytes_received += size
        reason = guard.check(host, port, size, clock())
        if reason is None:
            try:
                reason = await _send(sock, data, host, port)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return  # the socket was closed under us: the server is stopping
        if reason is None:
            stats.datagrams_echoed += 1
            stats.bytes_sent += size
        else:
            stats.datagrams_dropped += 1
            stats.errors[f"udp {reason}"] += 1
            logger.debug("udp %s:%d: dropped %d bytes (%s)", host, port, size, reason)


async def _send(sock: UDPSocket, data: bytes, host: str, port: int) -> str | None:
    try:
        await sock.sendto(data, host, port)
    except OSError:
        return "send failed"
    except anyio.BrokenResourceError as exc:
        if isinstance(exc.__cause__, OSError):
            return "send failed"
        raise
    return None
