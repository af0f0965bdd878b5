"""Listeners, the accept loop, per-connection isolation, readiness and shutdown."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Literal, cast

import anyio
from anyio import (
    TASK_STATUS_IGNORED,
    BrokenResourceError,
    CancelScope,
    ClosedResourceError,
    create_task_group,
)
from anyio.abc import (
    ByteStream,
    Listener,
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)

from ._backends import current_backend_name
from ._config import ServerConfig
from ._echo import echo
from ._stats import ByteCounter, ServerStats, StatsSnapshot

__all__ = ["EchoServer", "ListenAddress", "ListenError", "serve"]

logger = logging.getLogger("anyecho")

#: accept() failures that mean "out of a resource, try again later". Trio's
#: ``serve_listeners`` pauses on the same set; AnyIO raises them as plain
#: :exc:`OSError` on asyncio and as :exc:`~anyio.BrokenResourceError` (with the
#: :exc:`OSError` as ``__cause__``) on Trio, so both shapes are unwrapped below.
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: accept() failures that belong to one pending connection that died before we got
#: to it (accept(2): "treat like EAGAIN by retrying"), and errors setting up the
#: accepted socket when the peer has already reset it.
CONNECTION_ERRNOS = frozenset(
    {
        errno.ECONNABORTED,
        errno.ECONNRESET,
        errno.EPROTO,
        errno.EPERM,
        errno.EINVAL,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.ENONET,
    }
)

#: Pause after an accept error that is not one connection's own (seconds).
ACCEPT_BACKOFF = 0.1


@dataclass(frozen=True)
class ListenAddress:
    """One address a server listens on.

    ``str()`` gives a URL-like form: ``tcp://127.0.0.1:8888``, ``tcp://[::1]:8888``.

    :param transport: ``tcp``, ``tls``, ``unix`` or ``udp``
    :param host: the IP address (``None`` for Unix sockets)
    :param port: the port number (``0`` for Unix sockets)
    :param path: the socket path, for Unix sockets
    """

    transport: Literal["tcp", "tls", "unix", "udp"]
    host: str | None = None
    port: int = 0
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.transport}://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"

    @classmethod
    def of_listener(
        cls,
        listener: Listener[Any],
        transport: Literal["tcp", "tls", "unix", "udp"] = "tcp",
    ) -> ListenAddress:
        local = listener.extra(SocketAttribute.local_address)
        if isinstance(local, tuple):
            return cls(transport, str(local[0]), int(local[1]))
        return cls(transport, path=str(local))


class ListenError(OSError):
    """A listening socket could not be opened; ``str()`` is a one-line reason."""

    def __str__(self) -> str:
        return str(self.strerror)


def _os_error(exc: BaseException) -> OSError | None:
    """The :exc:`OSError` behind an accept failure, on either backend."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BrokenResourceError) and isinstance(exc.__cause__, OSError):
        return exc.__cause__
    return None


def _describe(exc: BaseException) -> str:
    cause = _os_error(exc) or exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


class _Connection(ByteStream):
    """The accepted stream, counting bytes for the stats as they pass."""

    __slots__ = ("_counter", "_receive", "_send", "stream")

    def __init__(self, stream: ByteStream, counter: ByteCounter) -> None:
        self.stream = stream
        self._counter = counter
        self._receive = stream.receive
        self._send = stream.send

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._receive(max_bytes)
        self._counter.received += len(data)
        return data

    async def send(self, item: bytes) -> None:
        await self._send(item)
        self._counter.sent += len(item)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Any]:
        return self.stream.extra_attributes


class EchoServer:
    """An echo server: its settings, live state, and the coroutine that runs it.

    Run it with :meth:`serve`, usually through a task group so that you learn the
    addresses it listens on once it is ready:

    .. code-block:: python

        server = anyecho.EchoServer(anyecho.ServerConfig(host="127.0.0.1", port=0))
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve)
            ...  # talk to addresses[0].host, addresses[0].port
            server.stop()  # graceful: stop accepting, let connections finish

    :param config: the settings; keyword options override its fields (or build one
        from scratch): ``EchoServer(port=0)``
    """

    def __init__(self, config: ServerConfig | None = None, /, **options: Any) -> None:
        if config is None:
            config = ServerConfig(**options)
        elif options:
            config = config.replace(**options)
        self.config: ServerConfig = config
        #: the addresses listened on, once :meth:`serve` is ready
        self.addresses: list[ListenAddress] = []
        self._stats = ServerStats()
        self._accept_scope: CancelScope | None = None
        self._connections_scope: CancelScope | None = None
        self._stop_requested: float | None = None
        self._listening: anyio.Event | None = None
        self._draining: anyio.Event | None = None

    def _listening_event(self) -> anyio.Event:
        if self._listening is None:
            self._listening = anyio.Event()
        return self._listening

    def _draining_event(self) -> anyio.Event:
        if self._draining is None:
            self._draining = anyio.Event()
        return self._draining

    async def wait_listening(self) -> list[ListenAddress]:
        """Wait until :meth:`serve` listens, and return its addresses.

        The readiness signal for callers that start :meth:`serve` as a plain task
        (``asyncio.create_task``, a Trio nursery's ``start_soon``) rather than with
        ``task_group.start``.
        """
        await self._listening_event().wait()
        return list(self.addresses)

    async def wait_draining(self) -> None:
        """Wait until a stop has closed the listeners (connections may remain).

        From then on new connections are refused, while open ones finish within
        the grace period given to :meth:`stop`.
        """
        await self._draining_event().wait()

    @property
    def stats(self) -> StatsSnapshot:
        """The server's counters now (a snapshot; read it again for newer values)."""
        return self._stats.snapshot()

    def stop(self, grace: float | None = None) -> None:
        """Ask the server to stop; :meth:`serve` returns once it has.

        It stops accepting at once and closes its listeners; open connections may
        finish for up to ``grace`` seconds (default: the config's ``drain_timeout``)
        and are then closed. Calling it again with a shorter grace shortens the
        wait; ``stop(0)`` closes every connection now. Safe to call before the
        server is ready (it then stops as soon as it starts) and more than once.
        Call it from the event loop thread that runs the server.
        """
        if grace is None:
            grace = self.config.drain_timeout
        if grace < 0:
            raise ValueError(f"grace must be >= 0, not {grace}")
        first = self._stop_requested is None
        self._stop_requested = grace
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        if self._connections_scope is not None and not first:
            deadline = anyio.current_time() + grace
            scope = self._connections_scope
            scope.deadline = min(scope.deadline, deadline)

    async def serve(
        self, *, task_status: TaskStatus[list[ListenAddress]] = TASK_STATUS_IGNORED
    ) -> None:
        """Listen, report the bound addresses, and echo until stopped.

        With ``await task_group.start(server.serve)`` the call returns the list of
        :class:`ListenAddress` once the server accepts connections (a port of ``0``
        is replaced by the real one). Cancelling this coroutine stops the server
        at once; :meth:`stop` stops it gracefully.

        :raises OSError: when a listener cannot be opened (address in use, host
            that does not resolve, ...), with a message naming the address
        """
        async with AsyncExitStack() as stack:
            listeners = await self._open_listeners(stack)
            self.addresses = [ListenAddress.of_listener(lis) for lis in listeners]
            logger.info(
                "serving echo on %s (backend %s)",
                ", ".join(map(str, self.addresses)),
                current_backend_name(),
            )
            async with create_task_group() as connections:
                self._connections_scope = connections.cancel_scope
                with CancelScope() as self._accept_scope:
                    if self._stop_requested is not None:
                        self._accept_scope.cancel()
                    task_status.started(list(self.addresses))
                    self._listening_event().set()
                    async with create_task_group() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(
                                self._accept_loop, listener, connections
                            )
                # Stopping: no new connections; the listening sockets close now.
                await stack.aclose()
                self._drain(connections)
                self._draining_event().set()
            self._connections_scope = None
        logger.info("server stopped: %s", self.stats.summary())

    def _drain(self, connections: TaskGroup) -> None:
        grace = self._stop_requested
        if grace is None:  # the acceptors ended without a stop (cannot happen)
            grace = 0.0
        active = len(self._stats.open)
        if active:
            logger.info(
                "stopped accepting; %d connection(s) may finish within %gs",
                active,
                grace,
            )
        connections.cancel_scope.deadline = anyio.current_time() + grace

    async def _open_listeners(self, stack: AsyncExitStack) -> list[SocketListener]:
        config = self.config
        hosts: tuple[str | None, ...] = config.hosts or (None,)
        port = config.port
        listeners: list[SocketListener] = []
        for host in hosts:
            try:
                multi = await anyio.create_tcp_listener(
                    local_host=host, local_port=port, backlog=config.backlog
                )
            except OSError as exc:
                raise _listen_error(exc, host, port) from None
            stack.push_async_callback(multi.aclose)
            listeners.extend(cast(Sequence[SocketListener], multi.listeners))
            if port == 0:  # every further host gets the port the first one got
                port = ListenAddress.of_listener(multi.listeners[0]).port
        return listeners

    async def _accept_loop(
        self, listener: SocketListener, connections: TaskGroup
    ) -> None:
        # Listener.serve() would end the server on the first accept error; this
        # loop logs them, pauses on resource exhaustion, and carries on.
        accept = listener.accept
        handle = self._handle
        while True:
            try:
                stream = await accept()
            except ClosedResourceError:
                return
            except (OSError, BrokenResourceError) as exc:
                await self._accept_failed(exc)
                continue
            connections.start_soon(handle, stream)

    async def _accept_failed(self, exc: BaseException) -> None:
        self._stats.errors["accept"] += 1
        error = _os_error(exc)
        if error is not None and error.errno in CONNECTION_ERRNOS:
            logger.debug("accept: a pending connection failed (%s)", _describe(exc))
            return
        logger.warning(
            "accept failed (%s); pausing %d ms",
            _describe(exc),
            ACCEPT_BACKOFF * 1000,
        )
        await anyio.sleep(ACCEPT_BACKOFF)

    async def _handle(self, stream: SocketStream) -> None:
        counter = self._stats.opened()
        conn = _Connection(stream, counter)
        wrap = self.config.wrap_stream
        start = anyio.current_time()
        peer = _peer(stream) if logger.isEnabledFor(logging.DEBUG) else ""
        logger.debug("%s: connected", peer)
        try:
            await echo(
                wrap(conn) if wrap else conn, receive_size=self.config.receive_size
            )
        except (BrokenResourceError, ClosedResourceError, OSError) as exc:
            self._stats.errors["reset"] += 1
            logger.debug("%s: connection lost (%s)", peer, _describe(exc))
        except Exception:
            self._stats.errors["handler"] += 1
            logger.exception("%s: handler failed; closing this connection", peer)
        finally:
            await anyio.aclose_forcefully(stream)
            self._stats.closed(counter)
            logger.debug(
                "%s: closed, %d bytes in, %d bytes out, %.3fs",
                peer,
                counter.received,
                counter.sent,
                anyio.current_time() - start,
            )


def _peer(stream: ByteStream) -> str:
    address = stream.extra(SocketAttribute.remote_address, None)
    if isinstance(address, tuple):
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        return f"{host}:{address[1]}"
    return str(address or "peer")


def _listen_error(exc: OSError, host: str | None, port: int) -> OSError:
    where = f"[{host}]" if host and ":" in host else (host or "*")
    if isinstance(exc, socket.gaierror):
        message = f"cannot resolve host {host!r}: {exc.strerror or exc}"
    else:
        reason = exc.strerror or str(exc)
        message = f"cannot listen on {where}:{port}: {reason}"
    return ListenError(exc.errno, message)


async def serve(
    config: ServerConfig | None = None,
    /,
    *,
    task_status: TaskStatus[list[ListenAddress]] = TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve echo until cancelled; the one-call form of :class:`EchoServer`.

    Works unchanged under ``asyncio.run``, ``trio.run`` and ``anyio.run``, and with
    ``await task_group.start(...)``, which returns the :class:`ListenAddress` list
    once the server is ready.

    :param config: the settings, or ``None`` for the defaults
    :param options: :class:`ServerConfig` fields, overriding ``config``

    .. code-block:: python

        asyncio.run(anyecho.serve(host="127.0.0.1", port=8888))
        trio.run(functools.partial(anyecho.serve, port=8888))
        anyio.run(functools.partial(anyecho.serve, port=8888), backend="trio")
    """
    await EchoServer(config, **options).serve(task_status=task_status)
