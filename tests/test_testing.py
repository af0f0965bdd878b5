"""``anyecho.testing.serving`` and the pytest fixtures of ``anyecho.pytest_plugin``."""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteStream
from anyio.streams.tls import TLSListener

import anyecho
import anyecho.pytest_plugin
from anyecho import EchoServer, ListenAddress, ServerConfig
from anyecho.faults import Faults
from anyecho.pytest_plugin import EchoServerFactory
from anyecho.testing import TEST_DEFAULTS, RunningServer, serving

from .utils import TIMEOUT, SendRecorder, receive_exactly, recording, round_trip

pytestmark = pytest.mark.anyio


async def echo_and_close(stream: ByteStream) -> None:
    async with stream:
        await anyecho.echo(stream)


# --- serving() --------------------------------------------------------------------


async def test_serving_defaults() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            assert server.host == "127.0.0.1"
            assert server.port > 0
            assert server.address == ListenAddress("tcp", "127.0.0.1", server.port)
            assert server.addresses == (server.address,)
            assert str(server.address) == f"tcp://127.0.0.1:{server.port}"
            assert isinstance(server.server, EchoServer)
            assert server.config.drain_timeout == TEST_DEFAULTS["drain_timeout"]
            async with await server.connect() as client:
                await round_trip(client)
                stats = server.stats  # live
                assert stats.active_connections == 1
                assert stats.total_connections == 1
                assert stats.bytes_received == 4
    stats = server.stats  # final
    assert stats.active_connections == 0
    assert stats.bytes_sent == stats.bytes_received == 4
    assert not stats.errors


async def test_serving_takes_a_config_and_options() -> None:
    config = ServerConfig(host="127.0.0.1", port=0, drain_timeout=1.0)
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(config, receive_size=3) as server,
            await server.connect() as client,
        ):
            assert server.config == config.replace(receive_size=3)
            await round_trip(client, b"longer than three bytes")


async def test_serving_options_override_the_defaults() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(drain_timeout=0.25, backlog=8) as server:
            assert server.config.drain_timeout == 0.25
            assert server.config.backlog == 8
            assert server.host == "127.0.0.1"


async def test_startup_errors_are_not_wrapped() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as first:
            with pytest.raises(anyecho.ListenError, match="cannot listen"):
                async with serving(port=first.port):
                    pytest.fail("a second server started on the same port")


async def test_invalid_options_raise_value_error() -> None:
    with pytest.raises(ValueError, match="invalid port"):
        async with serving(port=-1):
            pytest.fail("started with an invalid port")


async def test_errors_in_the_block_are_not_wrapped() -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(KeyError, match="mine"):
        async with serving():
            raise KeyError("mine")


async def test_cancelling_the_block_stops_the_server() -> None:
    with anyio.fail_after(TIMEOUT):
        with anyio.move_on_after(0.05) as scope:
            async with serving() as server:
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert server.server.addresses  # it had started
        with pytest.raises(OSError):  # noqa: PT011 - any refusal will do
            await anyio.connect_tcp(server.host, server.port)


async def test_leaving_lets_open_connections_finish() -> None:
    received: list[bytes] = []

    async def finish(client: ByteStream) -> None:
        async with client:
            await client.send(b"late")
            received.append(await receive_exactly(client, 4))
            await client.send_eof()
            with pytest.raises(anyio.EndOfStream):
                await client.receive()

    with anyio.fail_after(TIMEOUT):
        async with (
            anyio.create_task_group() as tg,
            serving(drain_timeout=TIMEOUT) as server,
        ):
            client = await server.connect()
            await round_trip(client)
            # Leaving the block stops the server; this connection may still finish.
            tg.start_soon(finish, client)
    assert received == [b"late"]
    assert server.stats.active_connections == 0
    assert not server.stats.errors


async def test_leaving_closes_connections_after_the_grace() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(drain_timeout=0) as server:
            client = await server.connect()
            await round_trip(client)
        async with client:
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await client.receive()


async def test_faults_wrap_the_configs_own_wrapper() -> None:
    recorders: list[SendRecorder] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(
                faults=Faults(fragment=3), wrap_stream=recording(recorders)
            ) as server,
            await server.connect() as client,
        ):
            await round_trip(client, b"0123456789")
    (recorder,) = recorders
    assert sum(recorder.sizes) == 10
    assert max(recorder.sizes) <= 3


async def test_inactive_faults_add_no_wrapper() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(faults=Faults(seed=1)) as server:
            assert server.config.wrap_stream is None


def test_running_server_without_tcp() -> None:
    unix = ListenAddress("unix", path="/tmp/echo.sock")
    server = RunningServer(EchoServer(port=0), (unix,))
    with pytest.raises(LookupError, match="no TCP"):
        _ = server.host
    with pytest.raises(LookupError, match="no udp"):
        server.address_for("udp")
    assert server.address_for("unix") is unix


async def test_connect_refuses_what_it_cannot_do() -> None:
    udp = ListenAddress("udp", "127.0.0.1", 9)
    tls = ListenAddress("tls", "127.0.0.1", 9)
    server = RunningServer(EchoServer(port=0), (tls, udp))
    with pytest.raises(ValueError, match="connect_udp"):
        await server.connect("udp")
    with pytest.raises(ValueError, match="ssl_context"):
        await server.connect()


# --- the fixtures -----------------------------------------------------------------


def test_plugin_is_registered_on_install(pytestconfig: pytest.Config) -> None:
    # The fixtures come from the pytest11 entry point, not from a conftest.py.
    plugin = pytestconfig.pluginmanager.get_plugin("anyecho")
    assert plugin is anyecho.pytest_plugin


async def test_echo_server_fixture(echo_server: RunningServer) -> None:
    assert echo_server.host == "127.0.0.1"
    with anyio.fail_after(TIMEOUT):
        async with await echo_server.connect() as client:
            await round_trip(client)
        async with await echo_server.connect() as client:
            await round_trip(client, b"again")
    assert echo_server.stats.total_connections == 2


async def test_factory_starts_several_servers(
    echo_server_factory: EchoServerFactory,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            echo_server_factory() as plain,
            echo_server_factory(faults=Faults(close_after=2)) as cut,
        ):
            assert plain.port != cut.port
            async with await plain.connect() as client:
                await round_trip(client)
            async with await cut.connect() as client:
                await client.send(b"ping")
                assert await receive_exactly(client, 2) == b"pi"
                with pytest.raises(anyio.EndOfStream):
                    await client.receive()


async def test_factory_passes_config_and_options(
    echo_server_factory: EchoServerFactory,
) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, receive_size=5)
    with anyio.fail_after(TIMEOUT):
        async with echo_server_factory(config, drain_timeout=0) as server:
            assert server.config == config.replace(drain_timeout=0)
        async with echo_server_factory(backlog=16, receive_size=2) as server:
            assert server.config.backlog == 16
            assert server.config.receive_size == 2


def test_tls_fixtures(
    anyecho_server_ssl_context: ssl.SSLContext,
    anyecho_client_ssl_context: ssl.SSLContext,
) -> None:
    assert anyecho_client_ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert anyecho_client_ssl_context.check_hostname
    assert anyecho_server_ssl_context.protocol == ssl.PROTOCOL_TLS_SERVER


async def test_tls_contexts_talk_to_each_other(
    anyecho_server_ssl_context: ssl.SSLContext,
    anyecho_client_ssl_context: ssl.SSLContext,
) -> None:
    # Independent of the server's own TLS support: echo over AnyIO's TLS listener.
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    listener = TLSListener(tcp, anyecho_server_ssl_context, standard_compatible=False)
    with anyio.fail_after(TIMEOUT):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo_and_close)
            async with await anyio.connect_tcp(
                "127.0.0.1",
                port,
                ssl_context=anyecho_client_ssl_context,
                tls_standard_compatible=False,
            ) as client:
                await round_trip(client, b"secret")
            tg.cancel_scope.cancel()


async def test_factory_serves_tls(echo_server_factory: EchoServerFactory) -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server_factory(tls=True) as server:
            assert server.address.transport == "tls"
            async with await server.connect() as client:
                await round_trip(client, b"over tls")


async def test_factory_serves_unix(
    echo_server_factory: EchoServerFactory, sock_path: Path
) -> None:
    path = str(sock_path)
    with anyio.fail_after(TIMEOUT):
        async with echo_server_factory(unix=(path,)) as server:
            assert server.address_for("unix").path == path
            async with await server.connect("unix") as client:
                await round_trip(client, b"over unix")


async def test_factory_serves_udp(echo_server_factory: EchoServerFactory) -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server_factory(udp=True) as server:
            assert server.address_for("udp").port == server.port
            async with await server.connect_udp() as udp:
                await udp.send(b"datagram")
                assert await udp.receive() == b"datagram"
