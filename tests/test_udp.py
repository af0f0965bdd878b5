"""Datagram echo over real loopback sockets, on every backend.

Every datagram the kernel hands the server must be accounted for: answered (and
counted in ``datagrams_echoed``) or counted in ``datagrams_dropped`` with its
reason. The tests sync on exact counts, never on elapsed time: ``fail_after``
only turns a hang into a failure.
"""

from __future__ import annotations

import errno
import select
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from anyecho import RateLimit
from anyecho._args import parse_port_set
from anyecho._stats import ServerStats
from anyecho._udp import UDPGuard, _Responder, serve_udp
from anyecho.testing import RunningServer, serving

from .utils import TIMEOUT, needs_ipv6, random_bytes

pytestmark = pytest.mark.anyio

#: Limits no test reaches unless it means to.
UNLIMITED = RateLimit(1e9, 1e9)

#: ``IP_RECVERR`` (Linux); the socket module does not name it before Python 3.12.
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)


@asynccontextmanager
async def udp_server(**options: Any) -> AsyncIterator[RunningServer]:
    options.setdefault("udp_rate", UNLIMITED)
    options.setdefault("udp_byte_rate", UNLIMITED)
    async with serving(udp=True, **options) as server:
        yield server


def client(host: str = "127.0.0.1") -> socket.socket:
    """A non-blocking client socket; the tests wait on it with wait_readable."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def receive(sock: socket.socket) -> tuple[bytes, Any]:
    while True:
        try:
            return sock.recvfrom(65536)
        except BlockingIOError:
            await anyio.wait_readable(sock)


async def receive_n(sock: socket.socket, count: int) -> list[bytes]:
    return [(await receive(sock))[0] for _ in range(count)]


def udp_port(server: RunningServer) -> int:
    return server.address_for("udp").port


# --- echo -------------------------------------------------------------------


async def test_udp_echo() -> None:
    with anyio.fail_after(TIMEOUT):
        async with udp_server() as server:
            udp = server.address_for("udp")
            assert udp.port == server.port
            with client() as sock:
                for size in (1, 512, 65_000):
                    payload = random_bytes(size)
                    sock.sendto(payload, ("127.0.0.1", udp.port))
                    assert await receive(sock) == (payload, ("127.0.0.1", udp.port))
        assert server.stats.datagrams_echoed == 3
        assert server.stats.bytes_received == server.stats.bytes_sent == 65_513


@pytest.mark.parametrize("count", [151, 1000])
async def test_burst_is_answered_in_full(count: int) -> None:
    # Back to back, with nothing read in between: more datagrams than AnyIO's
    # asyncio socket queues (100). Small ones, so that the kernel's default
    # receive buffer holds the whole burst on the way in and on the way back.
    with anyio.fail_after(TIMEOUT):
        async with udp_server() as server:
            port = udp_port(server)
            with client() as sock:
                window = 160
                for start in range(0, count, window):
                    sent = range(start, min(start + window, count))
                    for index in sent:
                        sock.sendto(b"%d" % index, ("127.0.0.1", port))
                    answers = await receive_n(sock, len(sent))
                    assert answers == [b"%d" % index for index in sent]
        stats = server.stats
    assert (stats.datagrams_echoed, stats.datagrams_dropped) == (count, 0)
    assert (
        stats.bytes_sent
        == stats.bytes_received
        == sum(len(b"%d" % index) for index in range(count))
    )


async def test_empty_datagram_is_answered_with_an_empty_one() -> None:
    # RFC 862: "send back any data received", none included.
    with anyio.fail_after(TIMEOUT):
        async with udp_server() as server:
            port = udp_port(server)
            with client() as sock:
                sock.sendto(b"", ("127.0.0.1", port))
                assert await receive(sock) == (b"", ("127.0.0.1", port))
                sock.sendto(b"after", ("127.0.0.1", port))
                assert (await receive(sock))[0] == b"after"
        stats = server.stats
    assert (stats.datagrams_echoed, stats.datagrams_dropped) == (2, 0)
    assert stats.bytes_received == stats.bytes_sent == 5


@needs_ipv6
async def test_udp_echo_over_ipv6() -> None:
    with anyio.fail_after(TIMEOUT):
        async with udp_server(host="::1") as server:
            port = udp_port(server)
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
                sock.bind(("::1", 0))
                sock.setblocking(False)
                sock.sendto(b"six", ("::1", port))
                data, source = await receive(sock)
                assert (data, source[:2]) == (b"six", ("::1", port))
    assert server.stats.datagrams_echoed == 1


# --- the reflection guard -----------------------------------------------------


async def test_blocked_source_port_is_dropped_and_counted() -> None:
    with client() as victim, client("127.0.0.2") as sentinel:
        blocked = victim.getsockname()[1]
        with anyio.fail_after(TIMEOUT):
            async with udp_server(udp_blocked_ports={blocked}) as server:
                port = udp_port(server)
                victim.sendto(b"reflect me", ("127.0.0.1", port))
                # Datagrams are handled in order: once the sentinel is answered,
                # the first one has been decided on.
                sentinel.sendto(b"sentinel", ("127.0.0.1", port))
                assert (await receive(sentinel))[0] == b"sentinel"
                with pytest.raises(BlockingIOError):
                    victim.recvfrom(100)
        stats = server.stats
    assert (stats.datagrams_echoed, stats.datagrams_dropped) == (1, 1)
    assert dict(stats.datagrams_dropped_by_reason) == {"blocked-port": 1}
    assert stats.bytes_received == 10 + 8
    assert stats.bytes_sent == 8
    assert "datagrams 1 echoed / 1 dropped (blocked-port 1)" in stats.summary()


async def test_rate_limit_per_source() -> None:
    with anyio.fail_after(TIMEOUT):
        async with udp_server(udp_rate=RateLimit(1.0, 3.0)) as server:
            port = udp_port(server)
            with client() as flood, client("127.0.0.2") as sentinel:
                for index in range(10):
                    flood.sendto(b"%d" % index, ("127.0.0.1", port))
                sentinel.sendto(b"sentinel", ("127.0.0.1", port))
                assert (await receive(sentinel))[0] == b"sentinel"
                assert await receive_n(flood, 3) == [b"0", b"1", b"2"]
                with pytest.raises(BlockingIOError):
                    flood.recvfrom(100)
        stats = server.stats
    assert (stats.datagrams_echoed, stats.datagrams_dropped) == (4, 7)
    assert dict(stats.datagrams_dropped_by_reason) == {"rate-limit": 7}
    assert stats.bytes_received == 10 + 8
    assert stats.bytes_sent == 3 + 8


def test_udp_guard_buckets() -> None:
    guard = UDPGuard(
        blocked_ports=parse_port_set("0-1023,1900"),
        packets=RateLimit(10.0, 2.0),
        data=RateLimit(1000.0, 1500.0),
        max_sources=2,
    )
    assert guard.check("10.0.0.1", 0, 10, now=0.0) == "blocked-port"
    assert guard.check("10.0.0.1", 7, 10, now=0.0) == "blocked-port"
    assert guard.check("10.0.0.1", 19, 10, now=0.0) == "blocked-port"
    assert guard.check("10.0.0.1", 1900, 10, now=0.0) == "blocked-port"
    assert guard.check("10.0.0.1", 40000, 1000, now=0.0) is None
    assert guard.check("10.0.0.1", 40000, 1000, now=0.0) == "rate-limit"  # bytes
    assert guard.check("10.0.0.1", 40000, 100, now=0.0) is None
    assert guard.check("10.0.0.1", 40000, 1, now=0.0) == "rate-limit"  # packets
    assert guard.check("10.0.0.1", 40000, 100, now=0.1) is None  # refilled
    # Only two sources are remembered; a third evicts the oldest.
    assert guard.check("10.0.0.2", 40000, 1, now=0.1) is None
    assert guard.check("10.0.0.3", 40000, 1, now=0.1) is None
    assert guard.check("10.0.0.1", 40000, 1, now=0.1) is None  # fresh bucket


def test_port_set_parsing() -> None:
    assert parse_port_set("7, 9,13-15") == {7, 9, 13, 14, 15}
    for bad in ("x", "5-3", "70000", "1-2-3"):
        with pytest.raises(ValueError, match="invalid port"):
            parse_port_set(bad)


# --- peers that go away, errors the kernel reports ------------------------------


async def test_clients_gone_before_their_echo_do_not_stop_the_service() -> None:
    with anyio.fail_after(TIMEOUT):
        async with udp_server() as server:
            port = udp_port(server)
            for _ in range(20):
                with client() as gone:
                    gone.sendto(b"nobody listens", ("127.0.0.1", port))
            with client() as sock:
                sock.sendto(b"still here", ("127.0.0.1", port))
                assert (await receive(sock))[0] == b"still here"
            async with await server.connect() as stream:  # TCP too
                await stream.send(b"tcp")
                assert await stream.receive() == b"tcp"
        stats = server.stats
    # A datagram to a closed port is sent all the same: its ICMP error comes later.
    assert stats.datagrams_echoed + stats.datagrams_dropped == 21


@asynccontextmanager
async def serving_socket(
    raw: socket.socket, guard: UDPGuard | None = None
) -> AsyncIterator[tuple[socket.socket, ServerStats]]:
    """serve_udp on a socket made here, the way EchoServer runs it."""
    guard = guard or UDPGuard(
        blocked_ports=frozenset(), packets=UNLIMITED, data=UNLIMITED
    )
    stats = ServerStats()
    with raw:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_udp, raw, guard, stats)
            yield raw, stats
            tg.cancel_scope.cancel()


@pytest.mark.skipif(sys.platform != "linux", reason="IP_RECVERR is Linux's")
async def test_icmp_error_on_receive_costs_nothing_but_a_count(
    backend_name: str,
) -> None:
    # With IP_RECVERR, Linux reports the ICMP port unreachable an echo to a
    # closed port draws: the next receive fails with ECONNREFUSED, and the error
    # stays queued (the socket polls as in error) until read with MSG_ERRQUEUE.
    # (The server never sets IP_RECVERR; this is a socket given to serve_udp.)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    raw.bind(("127.0.0.1", 0))
    address = raw.getsockname()
    with client() as sentinel:
        with client() as gone:
            gone.sendto(b"nobody listens", address)
        sentinel.sendto(b"first", address)
        with anyio.fail_after(TIMEOUT):
            async with serving_socket(raw) as (sock, stats):
                assert (await receive(sentinel))[0] == b"first"
                sentinel.sendto(b"second", address)
                assert (await receive(sentinel))[0] == b"second"
                assert stats.errors["udp receive"] == 1
                fd = sock.fileno()
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                assert poller.poll(0) == []  # no error left pending
    assert (stats.datagrams_echoed, stats.datagrams_dropped) == (3, 0)


async def test_datagrams_waiting_before_the_service_starts_are_answered() -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    address = raw.getsockname()
    with client() as sock:
        for index in range(3):
            sock.sendto(b"%d" % index, address)
        with anyio.fail_after(TIMEOUT), raw:
            stats = ServerStats()
            guard = UDPGuard(
                blocked_ports=frozenset(), packets=UNLIMITED, data=UNLIMITED
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve_udp, raw, guard, stats)
                assert await receive_n(sock, 3) == [b"0", b"1", b"2"]
                tg.cancel_scope.cancel()
    assert stats.datagrams_echoed == 3


async def test_service_ends_when_its_socket_is_closed() -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    address = raw.getsockname()
    stats = ServerStats()
    guard = UDPGuard(blocked_ports=frozenset(), packets=UNLIMITED, data=UNLIMITED)
    with anyio.fail_after(TIMEOUT), client() as sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_udp, raw, guard, stats)
            sock.sendto(b"ping", address)
            assert (await receive(sock))[0] == b"ping"
            # As the server closes it: serve_udp returns on its own, and the task
            # group ends uncancelled.
            anyio.notify_closing(raw)
            raw.close()
    assert stats.datagrams_echoed == 1


class RefusingSocket:
    """Stands in for the server's socket, failing every send with ``error``."""

    def __init__(self, error: OSError) -> None:
        self.error = error

    def sendto(self, data: Any, address: Any) -> int:
        raise self.error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (BlockingIOError(errno.EAGAIN, "would block"), "send-buffer-full"),
        (OSError(errno.ENOBUFS, "no buffer space"), "send-buffer-full"),
        (OSError(errno.EMSGSIZE, "message too long"), "send-error"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "send-error"),
    ],
)
def test_failed_send_is_a_counted_drop(error: OSError, reason: str) -> None:
    stats = ServerStats()
    guard = UDPGuard(blocked_ports=frozenset(), packets=UNLIMITED, data=UNLIMITED)
    responder = _Responder(RefusingSocket(error), guard, stats, lambda: 0.0)
    responder.answer(b"data", ("127.0.0.1", 40000))
    assert (stats.datagrams_echoed, stats.datagrams_dropped) == (0, 1)
    assert dict(stats.datagrams_dropped_by_reason) == {reason: 1}
    assert (stats.bytes_received, stats.bytes_sent) == (4, 0)
    assert stats.snapshot().datagrams_dropped_by_reason == {reason: 1}
