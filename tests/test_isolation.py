"""No client can kill, starve or cut off the server: each attack over real sockets."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

import anyecho
from anyecho import ListenAddress, ServerConfig
from anyecho.testing import RunningServer, serving

from .utils import (
    TIMEOUT,
    random_bytes,
    receive_all,
    receive_exactly,
    reset_on_close,
    round_trip,
)

pytestmark = pytest.mark.anyio

#: How many connections the reset floods open (sequentially, from a thread).
FLOOD = 2000


def reset_flood(address: ListenAddress, count: int = FLOOD) -> None:
    """Connect and reset at once, ``count`` times (run in a worker thread).

    Over TCP with ``SO_LINGER`` 0, the close is a reset. A Unix socket cannot be
    reset, so there each client sends a byte and closes without reading the echo,
    which makes the server's send fail instead.
    """
    for _ in range(count):
        if address.path is not None:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(address.path)
            sock.send(b"x")
        else:
            sock = socket.create_connection((str(address.host), address.port))
            reset_on_close(sock)
        sock.close()


async def one_exact_echo(server: RunningServer, address: ListenAddress) -> None:
    payload = random_bytes(256 * 1024)
    async with await server.connect(address) as stream:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.send, payload)
            assert await receive_exactly(stream, len(payload)) == payload


@pytest.mark.parametrize("transport", ["tcp", "tls", "unix"])
async def test_a_reset_flood_leaves_the_server_serving(
    transport: str,
    sock_path: Path,
    anyecho_server_ssl_context: ssl.SSLContext,
    anyecho_client_ssl_context: ssl.SSLContext,
) -> None:
    options: dict[str, Any] = {
        # The defaults an operator runs with, per-source limit included.
        "max_connections_per_source": "auto",
        "unix": [str(sock_path)] if transport == "unix" else [],
    }
    if transport == "tls":
        options["ssl_context"] = anyecho_server_ssl_context
    with anyio.fail_after(TIMEOUT * 2):
        async with serving(
            client_ssl_context=anyecho_client_ssl_context, **options
        ) as server:
            address = server.address_for(transport)  # type: ignore[arg-type]
            await anyio.to_thread.run_sync(reset_flood, address)
            await one_exact_echo(server, address)
            # Every connection of the flood was seen and ended, none is left.
            with anyio.fail_after(TIMEOUT):
                stats = await server.wait_stats(
                    lambda s: (
                        s.total_connections == FLOOD + 1 and not s.active_connections
                    )
                )
            assert stats.total_connections == FLOOD + 1
            assert stats.errors.get("handler", 0) == 0


async def test_newcomers_are_accepted_while_others_stream() -> None:
    """100 connections stream flat out; 200 newcomers each get their echo."""
    streams, newcomers = 100, 200
    chunk = random_bytes(64 * 1024)
    async with serving(max_connections_per_source=None) as server:
        flowing = anyio.Event()
        started = 0

        async def stream_flat_out(stream: ByteStream) -> None:
            nonlocal started

            async def pump() -> None:
                while True:
                    await stream.send(chunk)

            async with stream, anyio.create_task_group() as tg:
                tg.start_soon(pump)
                await stream.receive()
                started += 1
                if started == streams:
                    flowing.set()
                while True:
                    await stream.receive()

        async def newcomer(index: int) -> None:
            data = b"newcomer %d" % index
            async with await server.connect() as stream:
                await round_trip(stream, data)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as load:
                for _ in range(streams):
                    load.start_soon(stream_flat_out, await server.connect())
                await flowing.wait()
                async with anyio.create_task_group() as tg:
                    for index in range(newcomers):
                        tg.start_soon(newcomer, index)
                load.cancel_scope.cancel()


# -- the idle timeout counts what the peer reads ---------------------------------------


def slow_reader(
    address: ListenAddress, payload: bytes, rate: int, piece: int = 8192
) -> bytes:
    """Send ``payload``, then read the echo at about ``rate`` bytes a second.

    A small receive buffer keeps the kernel from taking the whole echo at once,
    so the server's sends drain as fast as this client reads, and no faster.
    """
    if address.path is not None:
        sock = socket.socket(socket.AF_UNIX)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.connect(address.path)
    else:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.connect((str(address.host), address.port))
    received = bytearray()

    def send() -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    with sock:
        sock.settimeout(TIMEOUT)
        # Sending while reading: the echo backs up against this slow reader, and
        # a sender that waited for the reader would deadlock against it.
        sender = threading.Thread(target=send)
        sender.start()
        pause = piece / rate
        try:
            while True:
                data = sock.recv(piece)
                if not data:
                    return bytes(received)
                received += data
                # Pacing the reader, not waiting for anything: the point is to
                # be slow.
                anyio.from_thread.run(anyio.sleep, pause)
        finally:
            sender.join()


@pytest.mark.parametrize(
    ("transport", "size", "rate", "piece"),
    [
        # Loopback TCP buffers megabytes: a larger echo, read faster, still spends
        # seconds in sends that finish only long after the timeout.
        ("tcp", 8 * 1024 * 1024, 2 * 1024 * 1024, 32 * 1024),
        ("unix", 1024 * 1024, 256 * 1024, 8 * 1024),
    ],
)
async def test_a_slow_reader_is_not_idle(
    transport: str, size: int, rate: int, piece: int, sock_path: Path
) -> None:
    # About four seconds of echo through sends that block far longer than the
    # timeout, while bytes move all along: the reader gets every one.
    payload = random_bytes(size)
    async with serving(
        idle_timeout=0.3, unix=[str(sock_path)] if transport == "unix" else []
    ) as server:
        address = server.address_for(transport)  # type: ignore[arg-type]
        with anyio.fail_after(TIMEOUT):
            received = await anyio.to_thread.run_sync(
                slow_reader, address, payload, rate, piece
            )
        assert len(received) == len(payload)
        assert received == payload
        assert server.stats.errors.get("timeout", 0) == 0


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_a_reader_that_stops_is_still_closed(
    transport: str, sock_path: Path
) -> None:
    async with serving(
        idle_timeout=0.3, unix=[str(sock_path)] if transport == "unix" else []
    ) as server:
        address = server.address_for(transport)  # type: ignore[arg-type]
        family = socket.AF_UNIX if address.path is not None else socket.AF_INET
        with socket.socket(family) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.connect(address.path or (str(address.host), address.port))
            sock.setblocking(False)
            # Fill every buffer on the way back, then read nothing.
            payload = random_bytes(16 * 1024 * 1024)
            view = memoryview(payload)
            with anyio.fail_after(TIMEOUT):
                while server.stats.errors.get("timeout", 0) == 0:
                    try:
                        view = view[sock.send(view) :]
                    except BlockingIOError:
                        await anyio.wait_writable(sock)  # wakes when the server closes
                    except OSError:
                        break
                    if not view:
                        view = memoryview(payload)
                await server.wait_stats(lambda s: not s.active_connections)
        assert server.stats.errors["timeout"] == 1


# -- a few sources cannot lock everyone out --------------------------------------------


async def open_from(server: RunningServer, source: str) -> anyio.abc.SocketStream:
    return await anyio.connect_tcp(server.host, server.port, local_host=source)


async def echoes(stream: ByteStream, data: bytes) -> bool:
    await stream.send(data)
    received = b""
    with anyio.move_on_after(0.3):
        while len(received) < len(data):
            received += await stream.receive()
    return received == data


async def test_one_source_cannot_take_every_slot() -> None:
    async with serving(max_connections=10, max_connections_per_source=2) as server:
        with anyio.fail_after(TIMEOUT):
            hogs = [await open_from(server, "127.0.0.1") for _ in range(2)]
            for hog in hogs:
                assert await echoes(hog, b"hog")
            # A third from the same source waits, accepted but not served ...
            waiter = await open_from(server, "127.0.0.1")
            assert not await echoes(waiter, b"wait")
            # ... while another source is served at once.
            other = await open_from(server, "127.0.0.2")
            assert await echoes(other, b"other")
            assert server.stats.active_connections == 3
            # Past as many waiters as the limit, a connection is reset.
            # One more may wait; past that, a connection is reset at once.
            second_waiter = await open_from(server, "127.0.0.1")
            refused = socket.create_connection(
                (server.host, server.port), source_address=("127.0.0.1", 0)
            )
            with refused:
                stats = await server.wait_stats(lambda s: "source-limit" in s.errors)
                assert stats.errors["source-limit"] == 1
                with pytest.raises(ConnectionResetError):
                    refused.recv(1)
            # When a hog leaves, the first waiter is served, with what it sent.
            await hogs[0].aclose()
            assert await receive_exactly(waiter, 4) == b"wait"
            for stream in [hogs[1], waiter, second_waiter, other]:
                await stream.aclose()


async def test_waiters_hold_no_slot_so_two_sources_cannot_fill_the_server() -> None:
    async with serving(max_connections=6, max_connections_per_source=2) as server:
        with anyio.fail_after(TIMEOUT):
            opened = []
            for source in ("127.0.0.3", "127.0.0.4"):
                for _ in range(2):
                    stream = await open_from(server, source)
                    assert await echoes(stream, b"held")
                    opened.append(stream)
            # Two more from each: two wait (the pool holds as many as the
            # limit), the others are reset; none of them takes a global slot.
            extra = [
                socket.create_connection(
                    (server.host, server.port), source_address=(source, 0)
                )
                for source in ("127.0.0.3", "127.0.0.4")
                for _ in range(2)
            ]
            await server.wait_stats(lambda s: s.errors.get("source-limit", 0) == 2)
            other = await open_from(server, "127.0.0.9")
            assert await echoes(other, b"served")
            for stream in [*opened, other]:
                await stream.aclose()
            for sock in extra:
                sock.close()


async def test_no_waiter_starts_once_the_server_stops() -> None:
    async with serving(max_connections_per_source=1) as server:
        with anyio.fail_after(TIMEOUT):
            first = await open_from(server, "127.0.0.1")
            assert await echoes(first, b"a")
            waiter = await open_from(server, "127.0.0.1")
            await waiter.send(b"b")
            server.server.stop()
            await server.server.wait_draining()
            await first.aclose()
            # The waiter is closed with the listeners, never served.
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await waiter.receive()
            await waiter.aclose()


@pytest.mark.parametrize("limit", [None, 1000])
def test_auto_per_source_limit(limit: int | None) -> None:
    config = ServerConfig(max_connections=limit)
    assert config.max_connections_per_source == "auto"
    assert config.per_source_limit == 100
    assert ServerConfig(max_connections=50).per_source_limit == 10
    assert ServerConfig(max_connections=2).per_source_limit == 2
    assert ServerConfig(max_connections_per_source=None).per_source_limit is None
    with pytest.raises(ValueError, match="max_connections_per_source"):
        ServerConfig(max_connections_per_source=0)


async def test_failed_handshakes_cannot_flood_the_log(
    anyecho_server_ssl_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="anyecho")
    clients = 50
    async with serving(ssl_context=anyecho_server_ssl_context) as server:
        with anyio.fail_after(TIMEOUT):
            for _ in range(clients):
                async with await anyio.connect_tcp(server.host, server.port) as raw:
                    await raw.send(b"GET / HTTP/1.0\r\n\r\n")
                    await receive_all(raw)
            assert server.stats.errors["tls"] == clients
    lines = [
        r.getMessage()
        for r in caplog.records
        if "TLS handshake failed" in r.getMessage()
    ]
    summary = [
        r.getMessage()
        for r in caplog.records
        if "failed TLS handshakes" in r.getMessage()
    ]
    assert 1 <= len(lines) <= anyecho._logs.BURST
    expected = (
        f"{clients - len(lines)} more failed TLS handshakes, not logged one by one "
        "(at most 5 every 60s are)"
    )
    assert summary == [expected]


# -- the library's own errors and interrupts -------------------------------------------


INTERRUPTED = textwrap.dedent(
    """
    import functools, logging, sys
    import anyio, anyecho

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def interrupt(stream):
        raise KeyboardInterrupt

    backend, options = sys.argv[1], {{}}
    if backend == "uvloop":
        import uvloop
        options = {{"loop_factory": uvloop.new_event_loop}}
    runner = {runner}
    try:
        runner()
    except KeyboardInterrupt:
        print("caught KeyboardInterrupt")
    """
)

#: How each backend's own users start a server: ``asyncio.run``, ``uvloop.run`` or
#: ``trio.run``, and ``anyio.run`` on the same backend.
RUNNERS = {
    ("native", "asyncio"): "lambda: __import__('asyncio').run(anyecho.serve(port=0, "
    "wrap_stream=interrupt))",
    ("native", "uvloop"): "lambda: __import__('uvloop').run(anyecho.serve(port=0, "
    "wrap_stream=interrupt))",
    ("native", "trio"): "lambda: __import__('trio').run(functools.partial("
    "anyecho.serve, port=0, wrap_stream=interrupt))",
}
ANYIO_RUNNER = (
    "lambda: anyio.run(functools.partial(anyecho.serve, port=0, "
    "wrap_stream=interrupt), backend='trio' if backend == 'trio' else 'asyncio', "
    "backend_options=options)"
)


@pytest.mark.parametrize("runner", ["native", "anyio"])
async def test_keyboard_interrupt_comes_out_unwrapped(
    runner: str, backend_name: str
) -> None:
    """``except KeyboardInterrupt`` around ``trio.run(anyecho.serve)`` works."""
    code = ANYIO_RUNNER if runner == "anyio" else RUNNERS[runner, backend_name]
    script = INTERRUPTED.format(runner=code)
    async with await anyio.open_process(
        [sys.executable, "-c", script, backend_name],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        assert process.stderr is not None
        assert process.stdout is not None
        with anyio.fail_after(TIMEOUT):
            errors = BufferedByteReceiveStream(process.stderr)
            line = (await errors.receive_until(b"\n", 65536)).decode()
            assert "serving echo on tcp://127.0.0.1:" in line, line
            port = int(line.rsplit(":", 1)[1].split()[0])
            async with await anyio.connect_tcp("127.0.0.1", port):
                out = await receive_all(process.stdout)
                await process.wait()
    assert out == b"caught KeyboardInterrupt\n"
    assert process.returncode == 0
