"""Unix sockets and TLS, in-process on every backend (UDP: test_udp.py)."""

from __future__ import annotations

import logging
import socket
import ssl
import stat
from pathlib import Path

import anyio
import pytest
import trustme
from anyio import BrokenResourceError, EndOfStream

from anyecho import EchoServer, ListenAddress, ListenError
from anyecho.testing import RunningServer, serving

from .utils import (
    CLOCK_RESOLUTION,
    TIMEOUT,
    exchange,
    random_bytes,
    read_to_end,
    receive_all,
)

pytestmark = pytest.mark.anyio


# --- Unix sockets -----------------------------------------------------------


async def test_unix_echo_and_half_close(sock_path: Path) -> None:
    payload = random_bytes(2 * 1024 * 1024)
    with anyio.fail_after(TIMEOUT):
        async with serving(port=None, unix=[str(sock_path)]) as server:
            [address] = server.addresses
            assert address == ListenAddress("unix", path=str(sock_path))
            assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
            async with await server.connect(address) as stream:
                assert await exchange(stream, payload) == payload
            async with await server.connect(address) as stream:
                await stream.send_eof()
                assert await receive_all(stream) == b""
    assert not sock_path.exists(), "the socket file is removed on exit"


async def test_unix_alongside_tcp_with_mode(sock_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(unix=[str(sock_path)], unix_mode=0o660) as server:
            assert [a.transport for a in server.addresses] == ["tcp", "unix"]
            assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660
            for address in server.addresses:
                async with await server.connect(address) as stream:
                    assert await exchange(stream, b"both") == b"both"


async def test_unix_stale_socket_is_replaced(sock_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock_path))
    dead.close()  # the file stays: a server that died without cleaning up
    assert sock_path.exists()
    with anyio.fail_after(TIMEOUT):
        async with serving(port=None, unix=[str(sock_path)]) as server:
            async with await server.connect("unix") as stream:
                assert await exchange(stream, b"fresh") == b"fresh"


async def test_unix_live_socket_is_an_error(sock_path: Path) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(port=None, unix=[str(sock_path)]) as server:
            with pytest.raises(ListenError, match="a live server listens there"):
                await EchoServer(port=None, unix=[str(sock_path)]).serve()
            # The first server is untouched.
            async with await server.connect("unix") as stream:
                assert await exchange(stream, b"still") == b"still"


async def test_unix_path_holding_a_file_is_an_error(sock_path: Path) -> None:
    sock_path.write_text("not a socket")
    with pytest.raises(ListenError, match="not a socket"):
        await EchoServer(port=None, unix=[str(sock_path)]).serve()
    assert sock_path.read_text() == "not a socket"


# --- TLS --------------------------------------------------------------------


async def tls_half_close(
    address: ListenAddress, context: ssl.SSLContext, payload: bytes
) -> bytes:
    """Send ``payload``, then close_notify, and read the echo to the server's end.

    TLS 1.3 lets a peer keep reading after its close_notify; AnyIO's TLS stream
    cannot half-close, so this client drives an :class:`ssl.SSLObject` itself.
    """
    assert address.host is not None
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    async with await anyio.connect_tcp(address.host, address.port) as tcp:

        async def flush() -> None:
            if data := outgoing.read():
                await tcp.send(data)

        async def pull() -> None:
            try:
                incoming.write(await tcp.receive())
            except EndOfStream:
                incoming.write_eof()

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await flush()
                await pull()
        tls.write(payload)
        await flush()
        try:
            tls.unwrap()  # sends our close_notify
        except ssl.SSLWantReadError:
            pass
        await flush()
        echoed = bytearray()
        while True:
            try:
                echoed += tls.read(65536)
            except ssl.SSLWantReadError:
                await pull()
            except ssl.SSLZeroReturnError:  # the server's close_notify
                return bytes(echoed)


async def test_tls_echo_and_half_close(
    anyecho_server_ssl_context: ssl.SSLContext,
    anyecho_client_ssl_context: ssl.SSLContext,
) -> None:
    payload = random_bytes(100_000)
    with anyio.fail_after(TIMEOUT):
        async with serving(
            ssl_context=anyecho_server_ssl_context,
            client_ssl_context=anyecho_client_ssl_context,
        ) as server:
            address = server.address_for("tls")
            assert str(address).startswith("tls://127.0.0.1:")
            async with await server.connect(address) as stream:
                await stream.send(b"over tls")
                assert await stream.receive() == b"over tls"
            echoed = await tls_half_close(address, anyecho_client_ssl_context, payload)
            assert echoed == payload


async def garbage_client(server: RunningServer, data: bytes) -> bytes:
    """Send non-TLS bytes to a TLS port; return what comes back before the end."""
    async with await anyio.connect_tcp(server.host, server.port) as stream:
        await stream.send(data)
        return await read_to_end(stream)


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x00\x05garbage"]
)
async def test_tls_garbage_is_one_log_line_and_harms_nobody(
    anyecho_server_ssl_context: ssl.SSLContext,
    anyecho_client_ssl_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
) -> None:
    caplog.set_level(logging.INFO, logger="anyecho")
    with anyio.fail_after(TIMEOUT):
        async with serving(
            ssl_context=anyecho_server_ssl_context,
            client_ssl_context=anyecho_client_ssl_context,
        ) as server:
            async with await server.connect("tls") as good:
                await good.send(b"before")
                assert await good.receive() == b"before"
                assert b"before" not in await garbage_client(server, data)
                await good.send(b"after")
                assert await good.receive() == b"after"
            assert server.stats.errors["tls"] == 1
    failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is None
    assert "\n" not in failures[0].getMessage()


async def test_tls_handshake_timeout(
    anyecho_server_ssl_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="anyecho")
    with anyio.fail_after(TIMEOUT):
        async with serving(
            ssl_context=anyecho_server_ssl_context, tls_handshake_timeout=0.2
        ) as server:
            # Before connecting: the server's clock starts when it accepts,
            # which may be before connect() returns here.
            start = anyio.current_time()
            async with await anyio.connect_tcp(server.host, server.port) as silent:
                assert await read_to_end(silent) == b""
                assert anyio.current_time() - start >= 0.2 - CLOCK_RESOLUTION
            assert server.stats.errors["tls"] == 1
    assert any("no handshake within 0.2s" in r.getMessage() for r in caplog.records)


async def test_tls_client_certificate_required(
    anyecho_ca: trustme.CA, anyecho_client_ssl_context: ssl.SSLContext
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    anyecho_ca.issue_cert("localhost").configure_cert(server_context)
    anyecho_ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    with_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    anyecho_ca.configure_trust(with_cert)
    anyecho_ca.issue_cert("client@example.org").configure_cert(with_cert)
    with anyio.fail_after(TIMEOUT):
        async with serving(ssl_context=server_context) as server:
            port = server.address_for("tls").port
            async with await anyio.connect_tcp(
                "localhost", port, ssl_context=with_cert, tls=True
            ) as stream:
                await stream.send(b"mutual")
                assert await stream.receive() == b"mutual"
            # TLS 1.3: the client learns of the refusal on its first read.
            with pytest.raises((BrokenResourceError, ssl.SSLError, EndOfStream)):
                async with await anyio.connect_tcp(
                    "localhost", port, ssl_context=anyecho_client_ssl_context, tls=True
                ) as stream:
                    await stream.send(b"anonymous")
                    await stream.receive()
            assert server.stats.errors["tls"] >= 1


def test_tls_server_context_errors(tmp_path: Path) -> None:
    from anyecho import tls_server_context

    with pytest.raises(ValueError, match="cannot load TLS certificate") as info:
        tls_server_context(tmp_path / "missing.pem")
    assert "\n" not in str(info.value)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot load TLS certificate"):
        tls_server_context(bad)
