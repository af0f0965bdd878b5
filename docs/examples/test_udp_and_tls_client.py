"""A client's tests against a lossy UDP echo and against TLS servers it must refuse.

The code under test: ``ask_udp`` numbers each request, resends it until the answer
with its number comes back, and ignores stale or duplicated answers; ``open_tls``
connects with the default, verifying, TLS context. The servers come from
anyecho's pytest plugin; ``conftest.py`` chooses the event loops.
"""

from __future__ import annotations

import ssl
from itertools import count

import anyio
import pytest
import trustme
from anyio.abc import ByteStream, ConnectedUDPSocket

from anyecho.faults import Faults, UdpFaults
from anyecho.pytest_plugin import EchoServerFactory
from anyecho.testing import RunningServer

pytestmark = pytest.mark.anyio


# --- the code under test -----------------------------------------------------

_ids = count(1)


async def ask_udp(
    udp: ConnectedUDPSocket, message: bytes, *, attempts: int = 5, wait: float = 0.5
) -> bytes:
    """Send ``message`` until its answer comes back; skip answers to other ones."""
    request = b"%d:" % next(_ids) + message
    for _ in range(attempts):
        await udp.send(request)
        with anyio.move_on_after(wait):
            while (answer := await udp.receive()) != request:
                pass  # a stale or duplicated answer to an earlier request
            return answer.partition(b":")[2]
    raise TimeoutError(f"no answer after {attempts} attempts")


async def open_tls(host: str, port: int, context: ssl.SSLContext) -> ByteStream:
    return await anyio.connect_tcp(
        host, port, ssl_context=context, tls_hostname="localhost"
    )


# --- its tests ---------------------------------------------------------------


async def test_lost_datagrams_are_resent(
    echo_server_factory: EchoServerFactory,
) -> None:
    # Seed 3 drops the first two datagrams and answers the third.
    faults = Faults(udp=UdpFaults(drop=0.5, seed=3))
    async with (
        echo_server_factory(udp=True, faults=faults) as server,
        await server.connect_udp() as udp,
    ):
        assert await ask_udp(udp, b"ping") == b"ping"
    assert server.stats.udp_faults_injected["drop"] == 2


async def test_duplicates_are_not_taken_for_the_next_answer(
    echo_server_factory: EchoServerFactory,
) -> None:
    faults = Faults(udp=UdpFaults(duplicate=1.0))  # every answer comes twice
    async with (
        echo_server_factory(udp=True, faults=faults) as server,
        await server.connect_udp() as udp,
    ):
        assert await ask_udp(udp, b"one") == b"one"
        assert await ask_udp(udp, b"two") == b"two"


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()  # verifies certificates and host names
    ca.configure_trust(context)
    return context


async def test_expired_certificate_is_refused(
    echo_server_tls_expired: RunningServer, anyecho_ca: trustme.CA
) -> None:
    server = echo_server_tls_expired
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        await open_tls(server.host, server.port, trusting(anyecho_ca))


@pytest.mark.parametrize("failure", ["not-yet-valid", "wrong-host", "untrusted"])
async def test_bad_certificates_are_refused(
    failure: str, echo_server_factory: EchoServerFactory, anyecho_ca: trustme.CA
) -> None:
    async with echo_server_factory(tls=failure) as server:  # type: ignore[arg-type]
        with pytest.raises(ssl.SSLCertVerificationError):
            await open_tls(server.host, server.port, trusting(anyecho_ca))


async def test_client_certificate(
    echo_server_mtls: RunningServer, anyecho_client_cert_ssl_context: ssl.SSLContext
) -> None:
    server = echo_server_mtls
    context = anyecho_client_cert_ssl_context
    async with await open_tls(server.host, server.port, context) as stream:
        await stream.send(b"it is me")
        assert await stream.receive() == b"it is me"
