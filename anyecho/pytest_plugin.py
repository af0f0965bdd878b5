"""pytest fixtures that serve echo in-process, on the test's own event loop.

Installing anyecho (``pip install anyecho``) registers this plugin with pytest, so a
project that tests a client against an echo server just asks for a fixture; the
tests are AnyIO tests (``@pytest.mark.anyio``), and an ``anyio_backend`` fixture
picks the event loops to run them on:

.. code-block:: python

    import pytest
    from anyecho.faults import Faults

    pytestmark = pytest.mark.anyio

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request):
        return request.param

    async def test_round_trip(echo_server):
        async with await echo_server.connect() as stream:
            await stream.send(b"ping")
            assert await stream.receive() == b"ping"

    async def test_against_a_slow_server(echo_server_factory):
        async with echo_server_factory(faults=Faults(delay=0.05)) as server:
            ...  # server.host, server.port, server.connect(), server.stats

Fixtures:

``echo_server``
    A server with the default test settings (``127.0.0.1``, a free port), as a
    :class:`~anyecho.testing.RunningServer`; stopped after the test.
``echo_server_factory``
    An :class:`EchoServerFactory`: ``async with echo_server_factory(**options) as
    server:`` starts a server with any :class:`~anyecho.ServerConfig` options,
    ``faults=`` (:class:`~anyecho.faults.Faults`), and ``tls=True`` for TLS with
    the certificates below. Start as many as a test needs.
``anyecho_ca``, ``anyecho_server_ssl_context``, ``anyecho_client_ssl_context``
    A throwaway certificate authority (session-wide; needs ``trustme``), a server
    context with a certificate for ``localhost``, ``127.0.0.1`` and ``::1``, and a
    client context that trusts it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import trustme

    from ._config import ServerConfig
    from .faults import Faults
    from .testing import RunningServer

__all__ = [
    "EchoServerFactory",
    "anyecho_ca",
    "anyecho_client_ssl_context",
    "anyecho_server_ssl_context",
    "echo_server",
    "echo_server_factory",
]


class EchoServerFactory:
    """Starts echo servers for one test; the value of ``echo_server_factory``.

    .. code-block:: python

        async def test_tls(echo_server_factory):
            async with echo_server_factory(tls=True, receive_size=16) as server:
                stream = await server.connect()  # TLS, trusting the test CA
    """

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __call__(
        self,
        config: ServerConfig | None = None,
        /,
        *,
        faults: Faults | None = None,
        tls: bool = False,
        client_ssl_context: ssl.SSLContext | None = None,
        **options: Any,
    ) -> AbstractAsyncContextManager[RunningServer]:
        """An ``async with`` block that runs a server (see :func:`~.serving`).

        :param config: the settings, used as they are (default: the test settings)
        :param faults: faults to inject on its connections; the server it yields
            changes them while the test runs
            (:meth:`~anyecho.testing.RunningServer.set_faults`)
        :param tls: serve TLS with a certificate from ``anyecho_ca`` (unless
            ``ssl_context`` is given); :meth:`~anyecho.testing.RunningServer.connect`
            then trusts it
        :param client_ssl_context: the client context for TLS connections
        :param options: :class:`~anyecho.ServerConfig` fields
        """
        from .testing import serving

        if tls:
            getfixturevalue = self._request.getfixturevalue
            if getattr(config, "ssl_context", None) is None:
                options.setdefault(
                    "ssl_context", getfixturevalue("anyecho_server_ssl_context")
                )
            if client_ssl_context is None:
                client_ssl_context = getfixturevalue("anyecho_client_ssl_context")
        if faults is not None:
            options["faults"] = faults
        return serving(config, client_ssl_context=client_ssl_context, **options)


@pytest.fixture(scope="session")
def anyecho_ca() -> trustme.CA:
    """A certificate authority for the test session (skips without ``trustme``)."""
    pytest.importorskip("trustme")
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def anyecho_server_ssl_context(anyecho_ca: trustme.CA) -> ssl.SSLContext:
    """A server context whose certificate covers localhost, 127.0.0.1 and ::1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    anyecho_ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)
    return context


@pytest.fixture(scope="session")
def anyecho_client_ssl_context(anyecho_ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``anyecho_ca`` (and nothing else)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anyecho_ca.configure_trust(context)
    return context


@pytest.fixture
async def echo_server(anyio_backend: object) -> AsyncIterator[RunningServer]:
    """An echo server on the test's event loop (``127.0.0.1``, a free port)."""
    from .testing import serving

    async with serving() as server:
        yield server


@pytest.fixture
def echo_server_factory(request: pytest.FixtureRequest) -> EchoServerFactory:
    """Start servers with any settings: ``async with echo_server_factory(...)``."""
    return EchoServerFactory(request)
