"""The handler on its own, over in-memory streams: no sockets, exact semantics."""

from __future__ import annotations

import itertools

import anyio
import pytest
from anyio.abc import ByteStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyecho import ByteCounts, StreamWrapper, echo

from .utils import TIMEOUT, exchange, memory_stream_pair

pytestmark = pytest.mark.anyio


async def test_echoes_in_order_then_half_closes() -> None:
    async with memory_stream_pair() as (client, server):
        chunks = [b"first ", b"second ", b"third"]
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(echo, server)
                assert await exchange(client, chunks) == b"first second third"
        assert server.eof, "the handler must half-close after the peer's EOF"


async def test_returns_bytes_echoed() -> None:
    async with memory_stream_pair() as (client, server):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:

                async def serve() -> None:
                    assert await echo(server) == 11

                tg.start_soon(serve)
                await exchange(client, [b"hello", b" world"])


async def test_respects_receive_size() -> None:
    async with memory_stream_pair() as (client, server):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: echo(server, receive_size=3))
                assert await exchange(client, [b"abcdefgh"]) == b"abcdefgh"
        assert server.sent == [b"abc", b"def", b"gh"]


async def test_does_not_read_while_send_is_blocked() -> None:
    """Backpressure: with the echo unread, the handler must not ask for more."""
    async with memory_stream_pair() as (client, server):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(echo, server)
                await client.send(b"one")  # taken by the handler's first receive
                # The handler now blocks sending the echo, which nobody reads; this
                # send can only complete if the handler reads again, so it must not.
                with anyio.move_on_after(0.2) as scope:
                    await client.send(b"two")
                assert scope.cancelled_caught
                assert server.asked == [server.asked[0]]
                assert await client.receive() == b"one"
                tg.cancel_scope.cancel()


async def test_counts_bytes_as_they_pass() -> None:
    """Received as soon as a chunk is in; sent only once the stream took it."""
    counts = ByteCounts()
    counts.sent = counts.received = 100  # totals go on from where they are
    results: list[int] = []

    async def serve(server: ByteStream) -> None:
        results.append(await echo(server, counts=counts))

    async with memory_stream_pair() as (client, server):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, server)
                await client.send(b"one")
                await anyio.wait_all_tasks_blocked()  # in the echo's send
                assert (counts.received, counts.sent) == (103, 100)
                assert await client.receive() == b"one"
                await anyio.wait_all_tasks_blocked()  # in the next receive
                assert (counts.received, counts.sent) == (103, 103)
                assert await exchange(client, [b"two", b"three"]) == b"twothree"
    assert results == [11]
    assert repr(counts) == "ByteCounts(received=111, sent=111)"


async def test_closes_when_send_eof_is_unsupported() -> None:
    class NoHalfClose(StreamWrapper):
        closed = False

        async def send_eof(self) -> None:
            raise NotImplementedError

        async def aclose(self) -> None:
            self.closed = True
            await super().aclose()

    async with memory_stream_pair() as (client, server):
        no_eof = NoHalfClose(server)
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(echo, no_eof)
                assert await exchange(client, [b"tls-like"]) == b"tls-like"
        assert no_eof.closed


async def test_rejects_bad_receive_size() -> None:
    async with memory_stream_pair() as (_, server):
        with pytest.raises(ValueError, match="receive_size"):
            await echo(server, receive_size=0)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    payload=st.binary(max_size=4096),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=12),
    receive_size=st.integers(min_value=1, max_value=512),
)
async def test_property_memory_chunks_round_trip(
    payload: bytes, cuts: list[int], receive_size: int
) -> None:
    bounds = sorted({0, len(payload), *(c for c in cuts if c <= len(payload))})
    chunks = [payload[a:b] for a, b in itertools.pairwise(bounds)]
    async with memory_stream_pair() as (client, server):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: echo(server, receive_size=receive_size))
                assert await exchange(client, chunks) == payload
