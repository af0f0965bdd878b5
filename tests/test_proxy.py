"""The PROXY protocol in front of the server: the real client, and bad headers."""

from __future__ import annotations

import logging
import socket
import ssl
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteStream, SocketStream
from anyio.streams.tls import TLSStream

from anyecho import RateLimit, ServerConfig, ServerOptions, StreamWrapper
from anyecho._connection import trusted
from anyecho.testing import RunningServer, serving

from .processes import ServerProcess, echo_once, one_line_error
from .utils import (
    TIMEOUT,
    exchange,
    needs_ipv6,
    proxy_v1,
    proxy_v2,
    random_bytes,
    read_to_end,
    receive_exactly,
    tlv,
)

pytestmark = pytest.mark.anyio

#: The proxy the tests trust: the test client's own address.
TRUSTED = "127.0.0.1/32"
PROXIED: ServerOptions = {"proxy_protocol": True, "trusted_proxies": [TRUSTED]}

CLIENT = ("203.0.113.7", 40000)
CLIENT6 = ("2001:db8::7", 40000)

HEADERS = {
    "v1 TCP4": proxy_v1(CLIENT),
    "v1 TCP6": proxy_v1(CLIENT6, ("2001:db8::1", 7)),
    "v1 UNKNOWN": proxy_v1(None),
    "v2 TCP4": proxy_v2(CLIENT),
    "v2 TCP6": proxy_v2(CLIENT6, ("2001:db8::1", 7)),
    "v2 LOCAL": proxy_v2(CLIENT, local=True),
    "v2 UNSPEC": proxy_v2(None),
    "v2 TCP4 with TLVs": proxy_v2(
        CLIENT,
        tlvs=tlv(0x01, b"echo") + tlv(0x05, b"\x00" * 16) + tlv(0x04, b""),
    ),
    "v2 UNIX": proxy_v2("/run/client.sock", "/run/echo.sock"),
}
#: The address each header says the client has (None: the proxy's own).
SOURCES = {
    "v1 TCP4": "203.0.113.7:40000",
    "v1 TCP6": "[2001:db8::7]:40000",
    "v2 TCP4": "203.0.113.7:40000",
    "v2 TCP6": "[2001:db8::7]:40000",
    "v2 TCP4 with TLVs": "203.0.113.7:40000",
    "v2 UNIX": "unix:/run/client.sock",
}


async def rejected(stream: ByteStream, data: bytes) -> bool:
    """Send ``data`` and half-close; whether the server closed without a byte.

    The server may have reset the connection before the client is done sending.
    """
    try:
        await stream.send(data)
        await stream.send_eof()
    except (anyio.BrokenResourceError, OSError):
        pass
    return await read_to_end(stream) == b""


async def connect_from(server: RunningServer, local_host: str) -> SocketStream:
    return await anyio.connect_tcp(server.host, server.port, local_host=local_host)


@pytest.mark.parametrize("kind", list(HEADERS))
async def test_header_then_echo(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="anyecho")
    payload = random_bytes(100_000)
    with anyio.fail_after(TIMEOUT):
        async with serving(**PROXIED) as server:
            async with await server.connect() as stream:
                # The first bytes come in the header's own segment.
                echoed = await exchange(
                    stream, [HEADERS[kind] + payload[:10], payload[10:]]
                )
            assert echoed == payload
            stats = await server.wait_stats(lambda s: s.active_connections == 0)
    assert stats.bytes_received == stats.bytes_sent == len(payload)
    assert not stats.errors
    closed = [r.getMessage() for r in caplog.records if "closed," in r.getMessage()]
    assert len(closed) == 1
    if kind in SOURCES:
        assert closed[0].startswith(f"{SOURCES[kind]} via 127.0.0.1:")
    else:  # no client address in the header: the proxy's own
        assert closed[0].startswith("127.0.0.1:")


@pytest.mark.parametrize("kind", ["v1 TCP4", "v2 TCP4 with TLVs"])
async def test_header_split_byte_by_byte(kind: str) -> None:
    header = HEADERS[kind]
    with anyio.fail_after(TIMEOUT):
        async with serving(**PROXIED) as server:
            async with await server.connect() as stream:  # TCP_NODELAY: a segment each
                for i in range(len(header)):
                    await stream.send(header[i : i + 1])
                await stream.send(b"after")
                assert await receive_exactly(stream, 5) == b"after"
            await server.wait_stats(lambda s: s.active_connections == 0)
            assert not server.stats.errors


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="garbage"),
        pytest.param(b"hello, no header\n", id="no-header"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\nbytes", id="bad-v1"),
        pytest.param(proxy_v2(CLIENT)[:20], id="v2-truncated-then-eof"),
        pytest.param(proxy_v1(CLIENT)[:-2], id="v1-truncated-then-eof"),
    ],
)
async def test_bad_header_ends_the_connection_unechoed(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(**PROXIED) as server:
            async with await server.connect() as stream:
                assert await rejected(stream, data)
            stats = await server.wait_stats(lambda s: s.errors["proxy"] == 1)
            # Another connection is served as ever.
            async with await server.connect() as stream:
                assert await exchange(stream, proxy_v2(CLIENT) + b"ok") == b"ok"
    assert stats.bytes_sent == 0
    assert any("PROXY header" in r.getMessage() for r in caplog.records)


async def test_a_port_check_is_no_error() -> None:
    """A connection closed before its first byte (a TCP health check) is none."""
    with anyio.fail_after(TIMEOUT):
        async with serving(**PROXIED) as server:
            async with await server.connect() as stream:
                await stream.send_eof()
                assert await read_to_end(stream) == b""
            stats = await server.wait_stats(lambda s: s.active_connections == 0)
    assert stats.total_connections == 1
    assert stats.errors["proxy"] == 0


async def test_header_timeout() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(
            proxy_protocol=True, trusted_proxies=[TRUSTED], proxy_header_timeout=0.2
        ) as server:
            async with await server.connect() as stream:
                await stream.send(proxy_v2(CLIENT)[:10])  # and then nothing
                assert await read_to_end(stream) == b""
            stats = await server.wait_stats(lambda s: s.errors["proxy"] == 1)
    assert stats.bytes_sent == 0


async def test_untrusted_source_is_ended_unread() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(**PROXIED) as server:
            async with await connect_from(server, "127.0.0.2") as stream:
                assert await rejected(stream, proxy_v2(CLIENT) + b"spoofed")
            stats = await server.wait_stats(lambda s: s.errors["proxy"] == 1)
            assert stats.bytes_sent == 0
            async with await connect_from(server, "127.0.0.1") as stream:
                assert await exchange(stream, proxy_v2(CLIENT) + b"real") == b"real"


async def test_trusting_a_network() -> None:
    with anyio.fail_after(TIMEOUT):
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            proxy_protocol=True,
            trusted_proxies=["10.0.0.0/8", "127.0.0.0/8"],
        )
        async with serving(config) as server:
            for local in ("127.0.0.1", "127.0.0.2"):
                async with await connect_from(server, local) as stream:
                    assert await exchange(stream, proxy_v1(CLIENT) + b"x") == b"x"


@needs_ipv6
async def test_over_ipv6() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(
            host="::1", proxy_protocol=True, trusted_proxies=["::1"]
        ) as server:
            async with await server.connect() as stream:
                assert (
                    await exchange(stream, proxy_v2(CLIENT6, ("::1", 1)) + b"6") == b"6"
                )


async def test_per_source_limit_counts_the_real_client() -> None:
    header_a = proxy_v2(("198.51.100.1", 1000))
    header_b = proxy_v2(("198.51.100.2", 1000))
    with anyio.fail_after(TIMEOUT):
        async with serving(
            proxy_protocol=True, trusted_proxies=[TRUSTED], max_connections_per_source=1
        ) as server:
            first = await server.connect()
            await first.send(header_a + b"1")
            assert await first.receive() == b"1"
            # The same client again, through the same proxy: it waits.
            second = await server.connect()
            await second.send(header_a + b"2")
            # Another client through the same proxy is served at once.
            other = await server.connect()
            await other.send(header_b + b"3")
            assert await other.receive() == b"3"
            with anyio.move_on_after(0.3) as waited:
                await second.receive()
            assert waited.cancelled_caught, "a second connection of one source ran"
            # One waiter at most (the limit): a third one is reset.
            third = await server.connect()
            await third.send(header_a + b"4")
            assert await read_to_end(third) == b""
            await server.wait_stats(lambda s: s.errors["source-limit"] == 1)
            await first.aclose()  # the waiter takes its slot
            assert await second.receive() == b"2"
            for stream in (second, other, third):
                await stream.aclose()
            stats = await server.wait_stats(lambda s: s.active_connections == 0)
    assert stats.errors == {"source-limit": 1}


async def test_a_waiter_at_the_limit_ends_with_the_server() -> None:
    header = proxy_v2(("198.51.100.1", 1000))
    with anyio.fail_after(TIMEOUT):
        async with serving(
            proxy_protocol=True, trusted_proxies=[TRUSTED], max_connections_per_source=1
        ) as server:
            first = await server.connect()
            await first.send(header + b"1")
            assert await first.receive() == b"1"
            second = await server.connect()
            await second.send(header + b"2")
            server.server.stop(0)
            assert await read_to_end(second) == b""
            assert await read_to_end(first) == b""
            await first.aclose()
            await second.aclose()


async def test_proxied_tls(
    anyecho_server_ssl_context: ssl.SSLContext,
    anyecho_client_ssl_context: ssl.SSLContext,
) -> None:
    """The header comes first, in the clear; then the TLS handshake."""
    with anyio.fail_after(TIMEOUT):
        async with serving(
            proxy_protocol=True,
            trusted_proxies=[TRUSTED],
            ssl_context=anyecho_server_ssl_context,
        ) as server:
            tcp = await anyio.connect_tcp(server.host, server.port)
            await tcp.send(proxy_v2(CLIENT))
            async with await TLSStream.wrap(
                tcp,
                ssl_context=anyecho_client_ssl_context,
                hostname="localhost",
                standard_compatible=False,
            ) as stream:
                await stream.send(b"secret")
                assert await receive_exactly(stream, 6) == b"secret"
            stats = await server.wait_stats(lambda s: s.active_connections == 0)
    assert stats.errors["proxy"] == 0
    assert stats.errors["tls"] == 0


class HeaderFirst(StreamWrapper):
    """A client stream whose first send carries the PROXY header too: one segment."""

    def __init__(self, stream: ByteStream, header: bytes) -> None:
        super().__init__(stream)
        self.header = header

    async def send(self, item: bytes) -> None:
        header, self.header = self.header, b""
        await self.stream.send(header + item)


async def test_proxied_tls_hello_in_the_header_segment(
    anyecho_server_ssl_context: ssl.SSLContext,
    anyecho_client_ssl_context: ssl.SSLContext,
) -> None:
    """The TLS client hello that came with the header is not lost."""
    with anyio.fail_after(TIMEOUT):
        async with serving(
            proxy_protocol=True,
            trusted_proxies=[TRUSTED],
            ssl_context=anyecho_server_ssl_context,
        ) as server:
            tcp = await anyio.connect_tcp(server.host, server.port)
            async with await TLSStream.wrap(
                HeaderFirst(tcp, proxy_v1(CLIENT)),
                ssl_context=anyecho_client_ssl_context,
                hostname="localhost",
                standard_compatible=False,
            ) as stream:
                await stream.send(b"hello")
                assert await receive_exactly(stream, 5) == b"hello"
            stats = await server.wait_stats(lambda s: s.active_connections == 0)
    assert stats.errors["tls"] == 0
    assert stats.errors["proxy"] == 0


@pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets")
async def test_proxied_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    with anyio.fail_after(TIMEOUT):
        async with serving(
            proxy_protocol=True, trusted_proxies=[TRUSTED], unix=[path]
        ) as server:
            async with await server.connect("unix") as stream:
                assert await exchange(stream, proxy_v1(CLIENT) + b"u") == b"u"
            async with await server.connect("unix") as stream:
                assert await rejected(stream, b"no header")
            await server.wait_stats(lambda s: s.errors["proxy"] == 1)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="needs trusted_proxies"):
        ServerConfig(proxy_protocol=True)
    with pytest.raises(ValueError, match="only used with proxy_protocol"):
        ServerConfig(trusted_proxies=["10.0.0.0/8"])
    with pytest.raises(ValueError, match="invalid network"):
        ServerConfig(proxy_protocol=True, trusted_proxies=["10.0.0.0/33"])
    with pytest.raises(ValueError, match="proxy_header_timeout"):
        ServerConfig(
            proxy_protocol=True, trusted_proxies=[TRUSTED], proxy_header_timeout=0
        )
    config = ServerConfig(proxy_protocol=True, trusted_proxies="10.1.2.3/8")
    assert config.trusted_proxies == ("10.0.0.0/8",)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--proxy-protocol"], "--proxy-protocol needs --trusted-proxy"),
        (["--trusted-proxy", "10.0.0.0/8"], "--trusted-proxy needs --proxy-protocol"),
        (["--proxy-protocol", "--trusted-proxy", "10.0.0.x"], "invalid network"),
        (
            [
                "--proxy-protocol",
                "--trusted-proxy",
                "::1",
                "--proxy-header-timeout",
                "0",
            ],
            "invalid value",
        ),
    ],
)
def test_command_line_errors(args: list[str], message: str) -> None:
    status, line = one_line_error("serve", "--port", "0", *args)
    assert status == 2
    assert message in line


# --- datagrams: a PROXY v2 header at the start of each ----------------------------


def udp_client(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def answer(sock: socket.socket) -> bytes:
    await anyio.wait_readable(sock)
    return sock.recv(65536)


async def test_udp_behind_a_proxy_judges_the_real_client() -> None:
    def header(client: tuple[str, int]) -> bytes:
        return proxy_v2(client, ("127.0.0.1", 7), datagram=True)

    with anyio.fail_after(TIMEOUT):
        async with serving(
            proxy_protocol=True,
            trusted_proxies=[TRUSTED],
            udp=True,
            udp_rate=RateLimit(1.0, 2.0),
        ) as server:
            target = (server.host, server.address_for("udp").port)
            with udp_client() as proxy, udp_client("127.0.0.2") as stranger:
                # A client on a blocked port: the header's port, not the proxy's.
                proxy.sendto(header(("203.0.113.9", 53)) + b"reflect", target)
                # Client A may have two answers (the burst); then it is limited,
                # while client B, behind the same proxy, is not.
                for n in range(3):
                    proxy.sendto(header(("203.0.113.1", 5000)) + b"A%d" % n, target)
                proxy.sendto(b"no header", target)
                stranger.sendto(header(("203.0.113.3", 5000)) + b"spoofed", target)
                proxy.sendto(header(("203.0.113.2", 5000)) + b"B", target)
                answers = [await answer(proxy) for _ in range(3)]
                assert answers == [b"A0", b"A1", b"B"]
                # The stranger's datagram came before B's was answered.
                with pytest.raises(BlockingIOError):
                    stranger.recv(100)
    stats = server.stats
    assert dict(stats.datagrams_dropped_by_reason) == {
        "blocked-port": 1,
        "rate-limit": 1,
        "proxy-header": 1,
        "untrusted-source": 1,
    }
    assert stats.datagrams_echoed == 3
    assert stats.bytes_sent == 5


# --- from the command line ----------------------------------------------------------


def test_command_line_behind_a_proxy(backend_name: str) -> None:
    server = ServerProcess(
        "serve",
        *("--port", "0", "--backend", backend_name, "--log-level", "debug"),
        *("--proxy-protocol", "--trusted-proxy", "127.0.0.0/8"),
    )
    try:
        port = server.wait_port()
        payload = random_bytes(50_000)
        assert echo_once(port, proxy_v2(CLIENT) + payload) == payload
        server.wait_for(r"203\.0\.113\.7:40000 via 127\.0\.0\.1:\d+: closed, 50000 ")
        try:
            assert echo_once(port, proxy_v1(CLIENT)[:-1] + b"x") == b""
        except ConnectionResetError:
            pass  # ended unechoed, either way
        server.wait_for(r"127\.0\.0\.1:\d+: bad PROXY header")
        server.proc.terminate()
        status, log = server.finish()
    finally:
        server.kill()
    assert status == 0
    assert "proxy 1" in log  # the summary's error count


def test_trust_of_addresses() -> None:
    networks = ServerConfig(
        proxy_protocol=True, trusted_proxies=["10.0.0.0/8", "fd00::/8"]
    ).proxy_networks
    assert trusted(("10.1.2.3", 1), networks)
    assert trusted(("::ffff:10.1.2.3", 1, 0, 0), networks)
    assert trusted(("fd00::1", 1, 0, 0), networks)
    assert trusted(("fe80::1%lo", 1, 0, 1), networks) is False
    assert not trusted(("11.0.0.1", 1), networks)
    assert trusted("", networks)  # a Unix socket peer
    assert trusted(b"\0abstract", networks)
