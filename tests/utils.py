"""Client-side helpers shared by the test modules."""

from __future__ import annotations

import os

import anyio
from anyio.abc import ByteReceiveStream, ByteStream

from anyecho import ListenAddress

#: Upper bound for any single test's network exchange (seconds). Generous: it only
#: turns a hang into a failure, it never judges speed.
TIMEOUT = 60

#: Lower bounds on elapsed loop time allow for the clock's resolution: uvloop's
#: clock counts whole milliseconds, so 0.3 s can read as 0.299.
CLOCK_RESOLUTION = 0.002


async def send_all(stream: ByteStream, payload: bytes, chunk: int = 64 * 1024) -> None:
    """Send ``payload`` in ``chunk``-sized pieces, then half-close."""
    view = memoryview(payload)
    for start in range(0, len(view), chunk):
        await stream.send(bytes(view[start : start + chunk]))
    await stream.send_eof()


async def receive_all(stream: ByteReceiveStream) -> bytes:
    """Everything the peer sends until it ends its side."""
    received = bytearray()
    async for data in stream:
        received += data
    return bytes(received)


async def exchange(stream: ByteStream, payload: bytes, chunk: int = 64 * 1024) -> bytes:
    """Send ``payload`` and half-close while reading the echo, concurrently.

    Concurrency matters: a client that sends everything before reading would
    deadlock against any echo server that keeps backpressure, once the payload
    exceeds the socket buffers.
    """
    result = b""

    async def read() -> None:
        nonlocal result
        result = await receive_all(stream)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await send_all(stream, payload, chunk)
    return result


async def connect(address: ListenAddress) -> ByteStream:
    """Open a client stream to a listening address."""
    if address.path is not None:
        return await anyio.connect_unix(address.path)
    assert address.host is not None
    return await anyio.connect_tcp(address.host, address.port)


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
