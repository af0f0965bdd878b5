"""The TCP server over real loopback sockets, on every backend."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import pytest
from anyio import EndOfStream
from anyio.abc import SocketAttribute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anyecho
import anyecho._accept
from anyecho import EchoServer, ListenError, ServerConfig, StreamWrapper
from anyecho.testing import RunningServer, serving

from .utils import (
    TIMEOUT,
    connect,
    exchange,
    needs_ipv6,
    random_bytes,
    read_to_end,
    receive_all,
    reset_on_close,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "size", [0, 1, 64 * 1024, 16 * 1024 * 1024], ids=["0B", "1B", "64KiB", "16MiB"]
)
async def test_payload_echoed_exactly(echo_server: RunningServer, size: int) -> None:
    payload = random_bytes(size)
    with anyio.fail_after(TIMEOUT):
        async with await echo_server.connect() as stream:
            assert await exchange(stream, payload) == payload


async def test_many_concurrent_clients(echo_server: RunningServer) -> None:
    clients = 200
    payloads = [
        random_bytes(1 + int.from_bytes(os.urandom(2), "big")) for _ in range(clients)
    ]
    results: dict[int, bytes] = {}
    # Every client is connected before any sends, so all 200 are open at once.
    connected = anyio.Event()
    count = 0

    async def client(index: int) -> None:
        nonlocal count
        async with await echo_server.connect() as stream:
            count += 1
            if count == clients:
                connected.set()
            await connected.wait()
            results[index] = await exchange(stream, payloads[index], chunk=1000)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            for index in range(clients):
                tg.start_soon(client, index)
    assert len(results) == clients
    for index, payload in enumerate(payloads):
        assert results[index] == payload, f"client {index} got another echo"


async def test_half_close_gets_everything_then_eof(
    echo_server: RunningServer,
) -> None:
    """The client sends, then shuts down its write side; the echo still flows."""
    payload = random_bytes(3 * 1024 * 1024)
    with anyio.fail_after(TIMEOUT):
        async with await echo_server.connect() as stream:
            assert await exchange(stream, [payload]) == payload
            # Both directions are now closed: receiving again reports the end.
            with pytest.raises(EndOfStream):
                await stream.receive()


async def test_server_closes_after_immediate_eof(echo_server: RunningServer) -> None:
    with anyio.fail_after(TIMEOUT):
        async with await echo_server.connect() as stream:
            await stream.send_eof()
            assert await receive_all(stream) == b""


async def test_client_reset_does_not_disturb_others(echo_server: RunningServer) -> None:
    with anyio.fail_after(TIMEOUT):
        async with await echo_server.connect() as steady:
            await steady.send(b"before")
            assert await steady.receive() == b"before"

            # A client that resets while the server is busy sending to it.
            victim = await anyio.connect_tcp(echo_server.host, echo_server.port)
            await victim.send(random_bytes(4 * 1024 * 1024))
            reset_on_close(victim.extra(SocketAttribute.raw_socket))
            await victim.aclose()

            # A client that resets right after connecting.
            quick = await anyio.connect_tcp(echo_server.host, echo_server.port)
            reset_on_close(quick.extra(SocketAttribute.raw_socket))
            await quick.aclose()

            await steady.send(b"after")
            assert await steady.receive() == b"after"
            payload = random_bytes(100_000)
            async with await echo_server.connect() as fresh:
                assert await exchange(fresh, payload) == payload
    # Accepts are first in, first out: with ``fresh`` served, all four were.
    assert echo_server.stats.total_connections == 4


async def test_port_zero_reports_real_port() -> None:
    server = EchoServer(host="127.0.0.1", port=0)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve)
            assert addresses == server.addresses
            [address] = addresses
            assert address.transport == "tcp"
            assert address.host == "127.0.0.1"
            assert address.port != 0
            assert str(address) == f"tcp://127.0.0.1:{address.port}"
            # Ready means accepting: connect at once, no retries.
            async with await connect(address) as stream:
                assert await exchange(stream, b"ready") == b"ready"
            server.stop()


@needs_ipv6
async def test_ipv6_loopback() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(host="::1") as server:
            [address] = server.addresses
            assert address.host == "::1"
            assert str(address) == f"tcp://[::1]:{address.port}"
            async with await anyio.connect_tcp("::1", address.port) as stream:
                assert await exchange(stream, b"over v6") == b"over v6"


async def test_the_default_host_is_loopback_only() -> None:
    assert ServerConfig().host == "127.0.0.1"
    # A config used as it is: the library's defaults, not the test settings.
    with anyio.fail_after(TIMEOUT):
        async with serving(ServerConfig(port=0)) as server:
            assert [a.host for a in server.addresses] == ["127.0.0.1"]


@needs_ipv6
@pytest.mark.parametrize("host", ["*", None])
async def test_every_interface_only_when_asked_is_dual_stack(host: str | None) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(host=host) as server:
            port = server.addresses[0].port
            for host in ("127.0.0.1", "::1"):
                async with await anyio.connect_tcp(host, port) as stream:
                    assert await exchange(stream, host.encode()) == host.encode()


@needs_ipv6
async def test_several_hosts_share_one_free_port() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(host=["127.0.0.1", "::1"]) as server:
            addresses = server.addresses
            assert [a.host for a in addresses] == ["127.0.0.1", "::1"]
            assert len({a.port for a in addresses}) == 1
            for address in addresses:
                async with await server.connect(address) as stream:
                    assert await exchange(stream, b"both") == b"both"


async def test_port_in_use_is_a_clear_error(echo_server: RunningServer) -> None:
    server = EchoServer(host="127.0.0.1", port=echo_server.port)
    with pytest.raises(ListenError) as info:
        await server.serve()
    assert info.value.errno == errno.EADDRINUSE
    expected = f"cannot listen on 127.0.0.1:{echo_server.port}: "
    assert str(info.value).startswith(expected)


async def test_handler_error_ends_that_connection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BoomError(Exception):
        pass

    class FailOnMagic(StreamWrapper):
        """Raises inside the handler when it sees b"boom"."""

        async def receive(self, max_bytes: int = 65536) -> bytes:
            data = await self.stream.receive(max_bytes)
            if data == b"boom":
                raise BoomError
            return data

    caplog.set_level(logging.ERROR, logger="anyecho")
    with anyio.fail_after(TIMEOUT):
        async with serving(wrap_stream=FailOnMagic) as server:
            async with await server.connect() as steady:
                await steady.send(b"hi")
                assert await steady.receive() == b"hi"
                async with await server.connect() as doomed:
                    await doomed.send(b"boom")
                    # The server closes the failing connection: EOF or reset.
                    assert await read_to_end(doomed) == b""
                await steady.send(b"still here")
                assert await steady.receive() == b"still here"
    assert server.stats.errors["handler"] == 1
    [record] = [r for r in caplog.records if r.exc_info]
    assert "handler failed" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is BoomError


async def test_accept_errors_are_logged_and_retried(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = [
        OSError(code, os.strerror(code))
        for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
    ]
    failures.append(OSError(errno.ECONNABORTED, "Software caused connection abort"))
    expected = len(failures)
    real_accept = socket.socket.accept

    def flaky_accept(sock: socket.socket) -> tuple[socket.socket, Any]:
        # As accept(2) fails: with a connection pending, before taking it.
        if failures:
            raise failures.pop(0)
        return real_accept(sock)

    monkeypatch.setattr(anyecho._accept, "_accept", flaky_accept)
    monkeypatch.setattr(anyecho._accept, "ACCEPT_BACKOFF", 0.001)
    caplog.set_level(logging.DEBUG, logger="anyecho")
    with anyio.fail_after(TIMEOUT):
        async with serving() as server, await server.connect() as stream:
            assert await exchange(stream, b"survived") == b"survived"
    assert not failures
    assert server.stats.errors["accept"] == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == expected - 1  # ECONNABORTED is one client's, not ours
    assert any("Too many open files" in w for w in warnings)


async def test_stop_lets_a_transfer_finish() -> None:
    server = EchoServer(host="127.0.0.1", port=0)
    payload = random_bytes(2 * 1024 * 1024)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            [address] = await tg.start(server.serve)
            async with await connect(address) as stream:
                await stream.send(b"x")
                assert await stream.receive() == b"x"
                server.stop(grace=TIMEOUT)
                await server.wait_draining()
                # Stopped accepting: new connections are refused...
                with pytest.raises(OSError, match="connection"):
                    await connect(address)
                # ...but the open one is served to the end.
                assert await exchange(stream, payload) == payload
    assert server.stats.active_connections == 0


async def test_stop_zero_closes_connections_now() -> None:
    server = EchoServer(host="127.0.0.1", port=0)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            [address] = await tg.start(server.serve)
            async with await connect(address) as stream:
                await stream.send(b"x")
                assert await stream.receive() == b"x"
                server.stop(0)
                assert await read_to_end(stream) == b""


async def test_wait_listening_for_plain_tasks() -> None:
    server = EchoServer(host="127.0.0.1", port=0)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            [address] = await server.wait_listening()
            async with await connect(address) as stream:
                assert await exchange(stream, b"ok") == b"ok"
            server.stop()


async def test_serve_function_with_task_group_start() -> None:
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            [address] = await tg.start(partial(anyecho.serve, host="127.0.0.1", port=0))
            async with await connect(address) as stream:
                assert await exchange(stream, b"fn") == b"fn"
            tg.cancel_scope.cancel()


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="invalid port 70000"):
        ServerConfig(port=70000)
    with pytest.raises(ValueError, match="invalid port True"):
        ServerConfig(port=True)
    with pytest.raises(ValueError, match="invalid host"):
        ServerConfig(host="")
    with pytest.raises(ValueError, match="receive_size"):
        ServerConfig(receive_size=0)
    with pytest.raises(TypeError):
        EchoServer(no_such_option=1)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
async def shared_server(anyio_backend: Any) -> AsyncIterator[RunningServer]:
    async with serving() as server:
        yield server


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    payload=st.binary(min_size=0, max_size=200_000),
    cuts=st.lists(st.integers(min_value=0, max_value=200_000), max_size=20),
)
async def test_property_tcp_chunks_round_trip(
    shared_server: RunningServer, payload: bytes, cuts: list[int]
) -> None:
    """Random payloads, cut at random places and sent piecewise, come back whole."""
    bounds = sorted({0, len(payload), *(c for c in cuts if c <= len(payload))})
    pieces = [payload[a:b] for a, b in itertools.pairwise(bounds)]
    with anyio.fail_after(TIMEOUT):
        async with await shared_server.connect() as stream:
            echoed = await exchange(stream, pieces)
    assert echoed == payload


async def test_a_later_stop_never_lengthens_the_grace() -> None:
    server = EchoServer(host="127.0.0.1", port=0, drain_timeout=3600)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            [address] = await tg.start(server.serve)
            stream = await connect(address)
            await stream.send(b"open")
            server.stop(0)
            server.stop()  # the default grace: an hour, unless it stayed 0
        assert await read_to_end(stream) in (b"", b"open")
        await stream.aclose()
