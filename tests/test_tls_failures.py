"""TLS servers a client must refuse, and one that requires a client certificate.

The clients are real ones with the default context (``ssl.create_default_context``
trusting the test CA, checking host names): AnyIO's on every backend, and the
standard library's blocking one in a thread. Each must fail with the
verification error the fixture promises; the server counts the failed handshake
and keeps serving.
"""

from __future__ import annotations

import signal
import socket
import ssl
from pathlib import Path

import anyio
import pytest
import trustme
from anyio import BrokenResourceError, EndOfStream

from anyecho.pytest_plugin import EchoServerFactory
from anyecho.testing import TLS_FAILURES, RunningServer, tls_failure_context

from .processes import ServerProcess
from .utils import TIMEOUT, round_trip

pytestmark = pytest.mark.anyio

#: The failure, the name the client checks, and OpenSSL's ``verify_message``.
REFUSED = {
    "expired": ("expired", "localhost", "certificate has expired"),
    "not-yet-valid": ("not-yet-valid", "localhost", "certificate is not yet valid"),
    "wrong-host": (
        "wrong-host",
        "localhost",
        "Hostname mismatch, certificate is not valid for 'localhost'.",
    ),
    "wrong-host-address": (
        "wrong-host",
        "127.0.0.1",
        "IP address mismatch, certificate is not valid for '127.0.0.1'.",
    ),
    "untrusted": ("untrusted", "localhost", "unable to get local issuer certificate"),
    "self-signed": ("self-signed", "localhost", "self-signed certificate"),
}


def default_client(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def trusting_anything() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def blocking_handshake(port: int, context: ssl.SSLContext, name: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(b"never")


async def check_still_serving(server: RunningServer, failures: int) -> None:
    """The failed handshakes are counted, and the server echoes on."""
    await server.wait_stats(lambda s: s.errors["tls"] == failures)
    context = trusting_anything()
    async with await server.connect(ssl_context=context) as stream:
        await round_trip(stream, b"still here")


async def check_refused(server: RunningServer, case: str, ca: trustme.CA) -> None:
    """Default clients refuse the server's certificate, for the reason expected."""
    _, name, message = REFUSED[case]
    context = default_client(ca)
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await anyio.connect_tcp(
                server.host, server.port, ssl_context=context, tls_hostname=name
            )
        assert info.value.verify_message == message
        # The standard library's blocking client, in a thread: the same.
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await anyio.to_thread.run_sync(
                blocking_handshake, server.port, context, name
            )
        assert info.value.verify_message == message
        # RunningServer.connect() trusts the test CA: it fails all the same.
        with pytest.raises(ssl.SSLCertVerificationError):
            await server.connect(server_hostname=name)
        await check_still_serving(server, 3)


@pytest.mark.parametrize("case", list(REFUSED))
async def test_factory_serves_each_failure(
    case: str, echo_server_factory: EchoServerFactory, anyecho_ca: trustme.CA
) -> None:
    kind = REFUSED[case][0]
    async with echo_server_factory(tls=kind) as server:  # type: ignore[arg-type]
        assert server.address.transport == "tls"
        await check_refused(server, case, anyecho_ca)


async def test_expired_fixture(
    echo_server_tls_expired: RunningServer, anyecho_ca: trustme.CA
) -> None:
    await check_refused(echo_server_tls_expired, "expired", anyecho_ca)


async def test_not_yet_valid_fixture(
    echo_server_tls_not_yet_valid: RunningServer, anyecho_ca: trustme.CA
) -> None:
    await check_refused(echo_server_tls_not_yet_valid, "not-yet-valid", anyecho_ca)


async def test_wrong_host_fixture(
    echo_server_tls_wrong_host: RunningServer, anyecho_ca: trustme.CA
) -> None:
    await check_refused(echo_server_tls_wrong_host, "wrong-host", anyecho_ca)


async def test_untrusted_fixture(
    echo_server_tls_untrusted: RunningServer, anyecho_ca: trustme.CA
) -> None:
    await check_refused(echo_server_tls_untrusted, "untrusted", anyecho_ca)


async def test_self_signed_fixture(
    echo_server_tls_self_signed: RunningServer, anyecho_ca: trustme.CA
) -> None:
    await check_refused(echo_server_tls_self_signed, "self-signed", anyecho_ca)


def test_every_failure_is_tested() -> None:
    tested = {kind for kind, _, _ in REFUSED.values()}
    assert tested | {"client-cert-required"} == set(TLS_FAILURES)


async def test_mutual_tls(
    echo_server_mtls: RunningServer,
    anyecho_client_ssl_context: ssl.SSLContext,
    anyecho_client_cert_ssl_context: ssl.SSLContext,
) -> None:
    server = echo_server_mtls
    with anyio.fail_after(TIMEOUT):
        # Without a certificate: the server refuses. With TLS 1.3 the client's
        # handshake completes first, and the refusal arrives on its first read.
        with pytest.raises((ssl.SSLError, BrokenResourceError, EndOfStream)):
            async with await server.connect(
                ssl_context=anyecho_client_ssl_context
            ) as stream:
                await stream.send(b"anonymous")
                await stream.receive()
        await server.wait_stats(lambda s: s.errors["tls"] == 1)
        # With one signed by the test CA: an echo, and the next clients too.
        for _ in range(2):
            async with await server.connect(
                ssl_context=anyecho_client_cert_ssl_context, server_hostname="localhost"
            ) as stream:
                await round_trip(stream, b"mutual")
        assert server.stats.errors["tls"] == 1


def test_unknown_failure_is_a_one_line_error(anyecho_ca: trustme.CA) -> None:
    with pytest.raises(ValueError, match="unknown TLS failure 'bogus': expected"):
        tls_failure_context("bogus", anyecho_ca)  # type: ignore[arg-type]


def test_serve_requires_client_certificates(
    run: type[ServerProcess],
    tmp_path: Path,
    backend_name: str,
    anyecho_ca: trustme.CA,
    anyecho_client_ssl_context: ssl.SSLContext,
    anyecho_client_cert_ssl_context: ssl.SSLContext,
) -> None:
    cert = anyecho_ca.issue_cert("localhost", "127.0.0.1")
    both, ca = tmp_path / "server.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(both))
    anyecho_ca.cert_pem.write_to_path(str(ca))
    server = run(
        "serve", "--port", "0", "--backend", backend_name,
        "--tls-cert", str(both), "--tls-client-ca", str(ca),
    )  # fmt: skip
    port = int(server.wait_for(r"tls://127\.0\.0\.1:(\d+)").group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with anyecho_client_ssl_context.wrap_socket(
            raw, server_hostname="localhost"
        ) as tls:
            tls.sendall(b"anonymous")
            try:
                answer = tls.recv(100)
            except (ssl.SSLError, ConnectionResetError):
                answer = b""  # the refusal, as an alert or a reset
            assert answer == b""  # never an echo
    server.wait_for("TLS handshake failed")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with anyecho_client_cert_ssl_context.wrap_socket(
            raw, server_hostname="localhost"
        ) as tls:
            tls.sendall(b"mutual")
            assert tls.recv(100) == b"mutual"
    server.proc.send_signal(signal.SIGTERM)
    status, stderr = server.finish()
    assert status == 0, stderr
    assert "tls 1" in stderr
