"""The handler on its own, over in-memory streams: no sockets, exact semantics."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio import EndOfStream
from anyio.abc import ByteReceiveStream, ByteSendStream, ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.stapled import StapledByteStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyecho import ByteCounts, echo

from .utils import TIMEOUT

pytestmark = pytest.mark.anyio


class MemorySend(ByteSendStream):
    """A byte send stream over a memory object stream; records each send."""

    def __init__(self, stream: MemoryObjectSendStream[bytes]) -> None:
        self.stream = stream
        self.sends: list[bytes] = []
        self.eof = False

    async def send(self, item: bytes) -> None:
        self.sends.append(item)
        await self.stream.send(item)

    async def aclose(self) -> None:
        self.eof = True
        await self.stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return {}


class MemoryReceive(ByteReceiveStream):
    """A byte receive stream over a memory object stream, honouring max_bytes."""

    def __init__(self, stream: MemoryObjectReceiveStream[bytes]) -> None:
        self.stream = stream
        self.pending = b""
        self.asked: list[int] = []

    async def receive(self, max_bytes: int = 65536) -> bytes:
        self.asked.append(max_bytes)
        if not self.pending:
            self.pending = await self.stream.receive()  # EndOfStream at the end
        data, self.pending = self.pending[:max_bytes], self.pending[max_bytes:]
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return {}


def memory_pipe() -> tuple[MemorySend, MemoryReceive]:
    # Buffer size 0: every send waits for a receive, so backpressure is visible.
    send, receive = anyio.create_memory_object_stream[bytes](0)
    return MemorySend(send), MemoryReceive(receive)


@asynccontextmanager
async def memory_stream_pair() -> AsyncIterator[
    tuple[StapledByteStream, StapledByteStream]
]:
    """Two connected in-memory byte streams (client side, server side)."""
    to_server, server_in = memory_pipe()
    to_client, client_in = memory_pipe()
    client = StapledByteStream(to_server, client_in)
    server = StapledByteStream(to_client, server_in)
    async with client, server:
        yield client, server


async def run_client(client: ByteStream, chunks: list[bytes]) -> bytes:
    received = bytearray()

    async def read() -> None:
        while True:
            try:
                received.extend(await client.receive())
            except EndOfStream:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        for chunk in chunks:
            await client.send(chunk)
        await client.send_eof()
    return bytes(received)


async def test_echoes_in_order_then_half_closes() -> None:
    async with memory_stream_pair() as (client, server):
        chunks = [b"first ", b"second ", b"third"]
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(echo, server)
                assert await run_client(client, chunks) == b"first second third"
        server_send = server.send_stream
        assert isinstance(server_send, MemorySend)
        assert server_send.eof, "the handler must half-close after the peer's EOF"


async def test_returns_bytes_echoed() -> None:
    async with memory_stream_pair() as (client, server):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:

                async def serve() -> None:
                    assert await echo(server) == 11

                tg.start_soon(serve)
                await run_client(client, [b"hello", b" world"])


async def test_respects_receive_size() -> None:
    async with memory_stream_pair() as (client, server):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: echo(server, receive_size=3))
                assert await run_client(client, [b"abcdefgh"]) == b"abcdefgh"
        server_send = server.send_stream
        assert isinstance(server_send, MemorySend)
        assert server_send.sends == [b"abc", b"def", b"gh"]


async def test_does_not_read_while_send_is_blocked() -> None:
    """Backpressure: with the echo unread, the handler must not ask for more."""
    async with memory_stream_pair() as (client, server):
        server_receive = server.receive_stream
        assert isinstance(server_receive, MemoryReceive)
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(echo, server)
                await client.send(b"one")  # taken by the handler's first receive
                # The handler now blocks sending the echo, which nobody reads; this
                # send can only complete if the handler reads again, so it must not.
                with anyio.move_on_after(0.2) as scope:
                    await client.send(b"two")
                assert scope.cancelled_caught
                assert server_receive.asked == [server_receive.asked[0]]
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
                assert await run_client(client, [b"two", b"three"]) == b"twothree"
    assert results == [11]
    assert repr(counts) == "ByteCounts(received=111, sent=111)"


async def test_closes_when_send_eof_is_unsupported() -> None:
    class NoHalfClose(StapledByteStream):
        closed = False

        async def send_eof(self) -> None:
            raise NotImplementedError

        async def aclose(self) -> None:
            self.closed = True
            await super().aclose()

    async with memory_stream_pair() as (client, server):
        no_eof = NoHalfClose(server.send_stream, server.receive_stream)
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(echo, no_eof)
                assert await run_client(client, [b"tls-like"]) == b"tls-like"
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
                assert await run_client(client, chunks) == payload
