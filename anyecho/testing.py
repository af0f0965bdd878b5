"""Serve echo inside a test, on whatever event loop the test runs on.

:func:`serving` starts an :class:`~anyecho.EchoServer` in the current event loop
(asyncio, uvloop or Trio: any AnyIO backend), on ``127.0.0.1`` and a free port by
default, and stops it when the block ends:

.. code-block:: python

    from anyecho.testing import serving

    async def test_round_trip():
        async with serving() as server:
            async with await server.connect() as stream:
                await stream.send(b"ping")
                assert await stream.receive() == b"ping"

With pytest, the ``echo_server`` and ``echo_server_factory`` fixtures of
:mod:`anyecho.pytest_plugin` do this for you.

:func:`tls_failure_context` makes the TLS servers a client must refuse (an expired
certificate, one for another host, one from a CA it does not trust, ...) and one
that requires a client certificate; :func:`client_cert_context` makes the client
that such a server accepts. They need ``trustme`` (``pip install anyecho[test]``).
"""

from __future__ import annotations

import datetime
import os
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import anyio
from anyio.abc import ByteStream, ConnectedUDPSocket

from ._config import ServerConfig, ServerOptions
from ._connection import ConnectionInfo
from ._recording import Recording
from ._server import EchoServer
from ._sockets import ListenAddress, Transport
from ._stats import StatsSnapshot
from .faults import Faults, UdpFaults

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup
if TYPE_CHECKING:
    import trustme
    from typing_extensions import Unpack

__all__ = [
    "TEST_DEFAULTS",
    "TLS_FAILURES",
    "Recording",
    "RunningServer",
    "TLSFailure",
    "client_cert_context",
    "serving",
    "tls_failure_context",
]

#: The :class:`~anyecho.ServerConfig` settings :func:`serving` starts from: loopback
#: only, a free port, a short drain on the way out, no per-source limit (every
#: client of a test comes from the same address: a pool of 200 must not wait), and
#: recordings of what the clients send (:attr:`RunningServer.recordings`).
TEST_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "drain_timeout": 0.5,
    "max_connections_per_source": None,
    "record": True,
}


@dataclass(frozen=True, eq=False)
class RunningServer:
    """A server started by :func:`serving`: where it listens, and how it is doing.

    :param server: the :class:`~anyecho.EchoServer` itself (``server.stop(0)``
        closes every connection now)
    :param addresses: every address it listens on, in the order it reported them
    :param client_ssl_context: what :meth:`connect` uses for TLS unless given one

    .. code-block:: python

        async with serving(unix=["/tmp/echo.sock"]) as server:
            print(server.address, server.address_for("unix"), server.stats)
    """

    server: EchoServer
    addresses: tuple[ListenAddress, ...]
    client_ssl_context: ssl.SSLContext | None = None

    @property
    def config(self) -> ServerConfig:
        """The settings the server runs with."""
        return self.server.config

    @property
    def stats(self) -> StatsSnapshot:
        """The server's counters now (final once the ``async with`` block is left)."""
        return self.server.stats

    async def wait_stats(
        self, predicate: Callable[[StatsSnapshot], bool]
    ) -> StatsSnapshot:
        """Wait until the counters satisfy ``predicate``, without sleeping.

        .. code-block:: python

            with anyio.fail_after(5):
                await server.wait_stats(lambda s: s.errors["timeout"] == 1)

        See :meth:`anyecho.EchoServer.wait_stats`.
        """
        return await self.server.wait_stats(predicate)

    def set_udp_faults(self, faults: UdpFaults | Mapping[str, Any] | None) -> None:
        """Replace the UDP impairments from the next datagram on; ``None`` clears.

        See :meth:`anyecho.EchoServer.set_udp_faults`.

        .. code-block:: python

            server.set_udp_faults(UdpFaults(drop=0.5, seed=1))
        """
        self.server.set_udp_faults(faults)

    # --- connections and recordings: see EchoServer --------------------------------

    def connections(self) -> list[ConnectionInfo]:
        """The open connections (:meth:`anyecho.EchoServer.connections`)."""
        return self.server.connections()

    def close_connection(self, id: int) -> bool:
        """Close one connection (:meth:`anyecho.EchoServer.close_connection`)."""
        return self.server.close_connection(id)

    def reset_connection(self, id: int) -> bool:
        """Reset one connection (:meth:`anyecho.EchoServer.reset_connection`)."""
        return self.server.reset_connection(id)

    def close_connections(self) -> int:
        """Close every connection (:meth:`anyecho.EchoServer.close_connections`)."""
        return self.server.close_connections()

    def reset_connections(self) -> int:
        """Reset every connection (:meth:`anyecho.EchoServer.reset_connections`)."""
        return self.server.reset_connections()

    @property
    def recordings(self) -> list[Recording]:
        """What each client sent (:attr:`anyecho.EchoServer.recordings`).

        .. code-block:: python

            async with serving() as server:
                await send_hello(server.host, server.port)
                await server.expect_bytes(b"HELLO\\n")
                [recording] = server.recordings
                assert recording.ended == "eof"
        """
        return self.server.recordings

    def recording(self, id: int) -> Recording:
        """One connection's recording (:meth:`anyecho.EchoServer.recording`)."""
        return self.server.recording(id)

    async def wait_connections(self, count: int) -> list[Recording]:
        """Wait for ``count`` connections
        (:meth:`anyecho.EchoServer.wait_connections`)."""
        return await self.server.wait_connections(count)

    async def wait_received(self, nbytes: int) -> int:
        """Wait for ``nbytes`` bytes from the clients
        (:meth:`anyecho.EchoServer.wait_received`)."""
        return await self.server.wait_received(nbytes)

    async def expect_bytes(
        self,
        expected: bytes,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the expectation's own bound
        connection: int | None = None,
    ) -> Recording:
        """Assert that a client sends ``expected`` next
        (:meth:`anyecho.EchoServer.expect_bytes`)."""
        return await self.server.expect_bytes(
            expected, timeout=timeout, connection=connection
        )

    @property
    def faults(self) -> Faults | None:
        """The faults injected now; see :meth:`anyecho.EchoServer.set_faults`."""
        return self.server.faults

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the faults at once; new connections and open ones get them
        (see :meth:`anyecho.EchoServer.set_faults` for which faults reach open
        connections).

        .. code-block:: python

            async with serving() as server, await server.connect() as client:
                await round_trip(client)
                server.set_faults(Faults(reset_after=0))  # cut it on cue
                with pytest.raises(anyio.BrokenResourceError):
                    await client.receive()
        """
        self.server.set_faults(faults)

    def clear_faults(self) -> None:
        """Inject no more faults."""
        self.server.clear_faults()

    def pause_accepting(self, seconds: float | None = None) -> None:
        """Accept nothing for a while; see
        :meth:`anyecho.EchoServer.pause_accepting`."""
        self.server.pause_accepting(seconds)

    def resume_accepting(self) -> None:
        """Accept again (see :meth:`anyecho.EchoServer.resume_accepting`)."""
        self.server.resume_accepting()

    @property
    def address(self) -> ListenAddress:
        """The first TCP (or TLS) address.

        :raises LookupError: when the server listens on no TCP socket
        """
        for address in self.addresses:
            if address.transport in {"tcp", "tls"}:
                return address
        raise LookupError("the server listens on no TCP socket")

    @property
    def host(self) -> str:
        """The IP address of :attr:`address`."""
        return str(self.address.host)

    @property
    def port(self) -> int:
        """The port of :attr:`address`."""
        return self.address.port

    def address_for(self, transport: Transport) -> ListenAddress:
        """The first address of a transport (``tcp``, ``tls``, ``unix``, ``udp``).

        :raises LookupError: when the server does not listen on that transport
        """
        for address in self.addresses:
            if address.transport == transport:
                return address
        raise LookupError(f"the server listens on no {transport} socket")

    async def connect(
        self,
        target: ListenAddress | Transport | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> ByteStream:
        """Open a stream connection to the server (close it when done).

        :param target: the address, or the first one of a transport; default:
            :attr:`address`
        :param ssl_context: for TLS (default: :attr:`client_ssl_context`)
        :param server_hostname: the name to check the certificate against
            (default: the address's host)

        .. code-block:: python

            async with await server.connect("unix") as stream:
                await stream.send(b"ping")
        """
        address = self._resolve(target)
        if address.transport == "unix":
            return await anyio.connect_unix(str(address.path))
        if address.transport == "udp":
            raise ValueError("UDP is not a stream: use connect_udp()")
        host = str(address.host)
        if address.transport == "tls":
            context = ssl_context or self.client_ssl_context
            if context is None:
                raise ValueError("a TLS address needs a client ssl_context")
            return await anyio.connect_tcp(
                host,
                address.port,
                ssl_context=context,
                tls_hostname=server_hostname or host,
            )
        return await anyio.connect_tcp(host, address.port)

    async def connect_udp(
        self, target: ListenAddress | None = None
    ) -> ConnectedUDPSocket:
        """Open a UDP socket connected to the server's (first) UDP address.

        .. code-block:: python

            async with await server.connect_udp() as udp:
                await udp.send(b"ping")
                assert await udp.receive() == b"ping"
        """
        address = target or self.address_for("udp")
        return await anyio.create_connected_udp_socket(str(address.host), address.port)

    def _resolve(self, target: ListenAddress | Transport | None) -> ListenAddress:
        if target is None:
            return self.address
        if isinstance(target, ListenAddress):
            return target
        return self.address_for(target)


def _single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def serving(
    config: ServerConfig | None = None,
    /,
    *,
    client_ssl_context: ssl.SSLContext | None = None,
    **options: Unpack[ServerOptions],
) -> AsyncIterator[RunningServer]:
    """Run an echo server for the duration of an ``async with`` block.

    The server runs in the current event loop, whatever the AnyIO backend, and is
    ready to accept connections when the block starts. Leaving the block stops it
    gracefully: it stops accepting, lets open connections finish for up to
    ``drain_timeout`` seconds (0.5 by default here), then closes them.

    Errors are not wrapped in exception groups: a listener that cannot be opened
    raises its :exc:`OSError`, and an error in the block propagates as it is.

    :param config: the settings, used as they are; without one, the server starts
        from :data:`TEST_DEFAULTS` (``127.0.0.1``, a free port)
    :param client_ssl_context: the default for :meth:`RunningServer.connect` to
        TLS addresses
    :param options: :class:`~anyecho.ServerConfig` fields, overriding ``config``
        (or the defaults); among them ``faults``, the faults to inject from the
        start (:class:`~anyecho.faults.Faults`), which apply on top of the
        config's own ``wrap_stream`` (which thus sees the traffic as it goes to
        and from the socket). Change them in the block with
        :meth:`RunningServer.set_faults`.

    .. code-block:: python

        async with serving(faults=Faults(fragment=1)) as server:
            stream = await server.connect()
    """
    if config is None:
        config = ServerConfig(**{**TEST_DEFAULTS, **options})
    elif options:
        config = config.replace(**options)
    server = EchoServer(config)
    try:
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve)
            try:
                yield RunningServer(server, tuple(addresses), client_ssl_context)
            finally:
                server.stop()
    except BaseExceptionGroup as group:
        leaf = _single_leaf(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__


# --- TLS servers a client must refuse ---------------------------------------------

#: How a TLS server of :func:`tls_failure_context` fails a client that trusts the
#: test CA and checks host names (as :func:`ssl.create_default_context` does):
#:
#: ``expired``
#:     its certificate expired yesterday (``certificate has expired``)
#: ``not-yet-valid``
#:     its certificate is valid from tomorrow (``certificate is not yet valid``)
#: ``wrong-host``
#:     its certificate names another host, ``wrong-host.invalid``, and no
#:     address (``Hostname mismatch``, or ``IP address mismatch`` when the client
#:     connects to an address)
#: ``untrusted``
#:     its certificate comes from a CA the client does not trust
#:     (``unable to get local issuer certificate``)
#: ``self-signed``
#:     its certificate signs itself (``self-signed certificate``)
#: ``client-cert-required``
#:     a valid certificate, but the server requires one from the client, signed
#:     by the test CA (mutual TLS): a client without one is refused by the server
#:     (:func:`client_cert_context` makes one it accepts)
TLSFailure = Literal[
    "expired",
    "not-yet-valid",
    "wrong-host",
    "untrusted",
    "self-signed",
    "client-cert-required",
]

#: Every :data:`TLSFailure`, to parametrize a test over.
TLS_FAILURES: tuple[TLSFailure, ...] = get_args(TLSFailure)

#: The names every good certificate here is for.
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def tls_failure_context(kind: TLSFailure, ca: trustme.CA) -> ssl.SSLContext:
    """A server context whose handshake fails as ``kind`` says (:data:`TLSFailure`).

    :param ca: the certificate authority the clients trust (a ``trustme.CA``):
        the failures are those such a client meets; ``untrusted`` and
        ``self-signed`` certificates come from elsewhere

    .. code-block:: python

        ca = trustme.CA()
        context = tls_failure_context("expired", ca)
        async with serving(ssl_context=context) as server:
            client = ssl.create_default_context()
            ca.configure_trust(client)
            with pytest.raises(ssl.SSLCertVerificationError):
                await anyio.connect_tcp(server.host, server.port, ssl_context=client)

    :raises ValueError: for an unknown ``kind``
    """
    import trustme

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if kind == "expired":
        cert = ca.issue_cert(
            *_LOCAL_NAMES, not_before=now - 30 * day, not_after=now - day
        )
    elif kind == "not-yet-valid":
        cert = ca.issue_cert(
            *_LOCAL_NAMES, not_before=now + day, not_after=now + 30 * day
        )
    elif kind == "wrong-host":
        cert = ca.issue_cert("wrong-host.invalid")
    elif kind == "untrusted":
        cert = trustme.CA().issue_cert(*_LOCAL_NAMES)
    elif kind == "self-signed":
        _load_self_signed(context, now)
        return context
    elif kind == "client-cert-required":
        cert = ca.issue_cert(*_LOCAL_NAMES)
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        raise ValueError(
            f"unknown TLS failure {kind!r}: expected one of {', '.join(TLS_FAILURES)}"
        )
    cert.configure_cert(context)
    return context


def client_cert_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca`` and presents a certificate it signed.

    What a ``client-cert-required`` server (or one made by
    :func:`anyecho.tls_server_context` with ``client_ca``) accepts.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    ca.issue_cert(
        "client@example.org", common_name="anyecho test client"
    ).configure_cert(context)
    return context


def _load_self_signed(context: ssl.SSLContext, now: datetime.datetime) -> None:
    """Give ``context`` a certificate for the local names that signs itself."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anyecho self-signed")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # load_cert_chain reads files only.
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
