"""Connection limit, idle timeout, drain, memory and descriptor bounds."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from anyio import BrokenResourceError

from anyecho import EchoServer
from anyecho.testing import serving

from .utils import (
    CLOCK_RESOLUTION,
    TIMEOUT,
    connect,
    exchange,
    random_bytes,
    read_to_end,
    receive_all,
)

pytestmark = pytest.mark.anyio


async def test_max_connections_makes_clients_wait() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(max_connections=2) as server:
            first = await server.connect()
            second = await server.connect()
            for stream in (first, second):
                await stream.send(b"in")
                assert await stream.receive() == b"in"
            third = await server.connect()  # queued by the kernel, not served
            await third.send(b"waiting")
            with anyio.move_on_after(0.3) as waited:
                await third.receive()
            assert waited.cancelled_caught, "a third client was served"
            assert server.stats.active_connections == 2
            await first.aclose()  # frees a slot
            assert await third.receive() == b"waiting"
            assert server.stats.total_connections == 3
            await second.aclose()
            await third.aclose()


async def test_idle_timeout_closes_silent_connection() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(idle_timeout=0.3) as server:
            async with await server.connect() as stream:
                # Before the last byte moves: the server times from then on.
                start = anyio.current_time()
                await stream.send(b"hello")
                assert await stream.receive() == b"hello"
                assert await read_to_end(stream) == b""
                assert anyio.current_time() - start >= 0.3 - CLOCK_RESOLUTION
            assert server.stats.errors["timeout"] == 1


async def test_idle_timeout_spares_a_talking_connection() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(idle_timeout=0.5) as server:
            async with await server.connect() as stream:
                # Talk for three timeouts, pausing well under one each time.
                for _ in range(10):
                    await stream.send(b"tick")
                    assert await stream.receive() == b"tick"
                    await anyio.sleep(0.15)
                assert await exchange(stream, b"done") == b"done"
            assert server.stats.errors["timeout"] == 0


async def test_idle_timeout_closes_a_client_that_never_reads() -> None:
    """A peer that stops reading cannot pin a connection (slowloris)."""
    with anyio.fail_after(TIMEOUT):
        async with serving(idle_timeout=0.5) as server:
            async with await server.connect() as stream:
                sent = 0
                chunk = random_bytes(256 * 1024)
                try:
                    while True:  # until the server gives up on us
                        with anyio.fail_after(TIMEOUT):
                            await stream.send(chunk)
                        sent += len(chunk)
                except BrokenResourceError:
                    pass
                assert sent < 256 * 1024 * 1024
            assert server.stats.errors["timeout"] == 1


async def test_writer_that_never_reads_holds_bounded_memory() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(idle_timeout=None) as server:
            receive_size = server.config.receive_size
            async with await server.connect() as stream:
                chunk = random_bytes(64 * 1024)
                sent = 0
                while True:
                    with anyio.move_on_after(0.5) as blocked:
                        await stream.send(chunk)
                    if blocked.cancelled_caught:
                        break  # the server stopped taking data: backpressure
                    sent += len(chunk)
                    assert sent < 512 * 1024 * 1024, "no backpressure"
                stats = server.stats
                # What the server read but could not send back yet: one chunk.
                assert stats.bytes_received - stats.bytes_sent <= receive_size
                assert stats.bytes_received < sent


async def test_drain_serves_half_close_after_stop() -> None:
    payload = random_bytes(3 * 1024 * 1024)
    server = EchoServer(host="127.0.0.1", port=0)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            [address] = await tg.start(server.serve)
            async with await connect(address) as stream:
                await stream.send(payload[:1000])
                assert await stream.receive() == payload[:1000]
                server.stop(grace=TIMEOUT)
                await server.wait_draining()
                # Mid-drain: the client sends the rest, half-closes, reads all.
                assert await exchange(stream, payload[1000:]) == payload[1000:]
    assert server.stats.bytes_sent == len(payload)


async def test_drain_deadline_closes_lingering_connections() -> None:
    server = EchoServer(host="127.0.0.1", port=0)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            [address] = await tg.start(server.serve)
            async with await connect(address) as lingering:
                await lingering.send(b"x")
                assert await lingering.receive() == b"x"
                start = anyio.current_time()
                server.stop(grace=0.3)
                assert await read_to_end(lingering) == b""
                assert anyio.current_time() - start >= 0.3 - CLOCK_RESOLUTION
    assert server.stats.active_connections == 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
async def test_descriptors_return_to_baseline_after_1000_connections() -> None:
    # Warm up: event loops open some descriptors lazily, once (uvloop's
    # resolver thread pool, for one); those are not per-connection leaks.
    async with serving() as warm_up, await warm_up.connect() as stream:
        assert await exchange(stream, b"warm") == b"warm"
    baseline = open_fds()
    with anyio.fail_after(TIMEOUT * 2):
        async with serving() as server:

            async def client(index: int) -> None:
                async with await server.connect() as stream:
                    data = b"%d" % index
                    assert await exchange(stream, data) == data

            for batch in range(20):
                async with anyio.create_task_group() as clients:
                    for index in range(50):
                        clients.start_soon(client, batch * 50 + index)
    assert server.stats.total_connections == 1000
    assert server.stats.active_connections == 0
    assert open_fds() == baseline


async def test_stats_snapshot_while_running() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server, await server.connect() as stream:
            await stream.send(b"12345")
            assert await stream.receive() == b"12345"
            stats = server.stats
            assert stats.active_connections == 1
            assert stats.total_connections == 1
            assert stats.bytes_received == 5
            assert "1 active / 1 total" in stats.summary()
            # The server counts a send once it returns; its EOF comes after.
            await stream.send_eof()
            assert await receive_all(stream) == b""
            assert server.stats.bytes_sent == 5
