"""Listeners, the accept loop, per-connection isolation, readiness and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import ssl
import stat
import struct
import sys
import termios
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, cast, runtime_checkable

import anyio
from anyio import (
    TASK_STATUS_IGNORED,
    BrokenResourceError,
    CancelScope,
    ClosedResourceError,
    EndOfStream,
    TypedAttributeProvider,
    create_task_group,
)
from anyio.abc import (
    ByteStream,
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)
from anyio.streams.tls import TLSStream

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from ._backends import BackendUnavailableError, current_backend_name
from ._config import ServerConfig
from ._echo import echo
from ._fastpath import adopt
from ._logs import LogLimiter
from ._memory import keep_freed_memory
from ._stats import ByteCounter, ServerStats, StatsSnapshot
from ._udp import UDPGuard, serve_udp
from ._wrap import StreamWrapper

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

#: Connections accepted in a row, when many are pending, before the accept loop
#: lets the open connections run: enough that a burst of newcomers is taken in a
#: few trips round the event loop, few enough that the busy ones are not starved.
ACCEPT_BATCH: Final = 128


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
        listener: TypedAttributeProvider,
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


class _Connection(StreamWrapper):
    """The accepted stream beneath a ``wrap_stream`` wrapper, counting what passes."""

    __slots__ = ("_counter", "_receive", "_send")

    def __init__(self, stream: ByteStream, counter: ByteCounter) -> None:
        super().__init__(stream)
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
        self._start_error: BaseException | None = None
        self._limit: anyio.Semaphore | None = None
        #: open connections per source address, for the per-source limit, and
        #: the connections waiting for one of their source's slots
        self._sources: dict[str, int] = {}
        self._waiting: dict[str, deque[tuple[socket.socket, Any]]] = {}
        self._connections: TaskGroup | None = None
        # What a peer can make the server log, bounded (see LogLimiter).
        self._log_tls_failed = LogLimiter(logger, logging.INFO, "failed TLS handshakes")
        self._log_refused = LogLimiter(
            logger, logging.WARNING, "connections refused at the per-source limit"
        )
        self._log_source_waits = LogLimiter(
            logger, logging.INFO, "waits at the per-source limit"
        )
        self._log_at_limit = LogLimiter(
            logger, logging.WARNING, "waits at the connection limit"
        )
        self._log_handler_failed = LogLimiter(logger, logging.ERROR, "handler failures")

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

        :raises RuntimeError: if the server failed to start (the cause is chained)
        """
        await self._listening_event().wait()
        if self._start_error is not None:
            raise RuntimeError("the server failed to start") from self._start_error
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

    async def wait_stats(
        self, predicate: Callable[[StatsSnapshot], bool]
    ) -> StatsSnapshot:
        """Wait until the counters satisfy ``predicate``; return that snapshot.

        Checked now and again whenever a connection ends or a client is turned
        away, so a test can wait for what it expects without sleeping:

        .. code-block:: python

            await server.wait_stats(lambda s: s.active_connections == 0)

        Bound the wait yourself (``anyio.fail_after``): it waits for as long as
        the predicate is false.
        """
        return await self._stats.wait_until(predicate)

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
        with _single_exception():
            await self._serve(task_status)

    async def _serve(self, task_status: TaskStatus[list[ListenAddress]]) -> None:
        config = self.config
        async with AsyncExitStack() as stack:
            try:
                _check_event_loop()
                keep_freed_memory()
                listeners = await self._open_listeners(stack)
            except BaseException as exc:
                self._start_error = exc
                self._listening_event().set()
                raise
            self.addresses = [address for _, address, _ in listeners]
            if config.max_connections is not None:
                self._limit = anyio.Semaphore(config.max_connections)
            logger.info(
                "serving echo on %s (backend %s)",
                ", ".join(map(str, self.addresses)),
                current_backend_name(),
            )
            async with create_task_group() as services:
                if config.idle_timeout is not None:
                    services.start_soon(self._watch_idle, config.idle_timeout)
                async with create_task_group() as connections:
                    self._connections = connections
                    self._connections_scope = connections.cancel_scope
                    with CancelScope() as self._accept_scope:
                        if self._stop_requested is not None:
                            self._accept_scope.cancel()
                        task_status.started(list(self.addresses))
                        self._listening_event().set()
                        async with create_task_group() as acceptors:
                            for serve_one, address, resource in listeners:
                                acceptors.start_soon(
                                    serve_one, resource, address, connections
                                )
                    # Stopping: no new connections; the listeners close now.
                    await stack.aclose()
                    self._drain(connections)
                    self._draining_event().set()
                self._connections = self._connections_scope = None
                self._close_waiters()
                services.cancel_scope.cancel()
        for log in (
            self._log_tls_failed,
            self._log_refused,
            self._log_source_waits,
            self._log_at_limit,
            self._log_handler_failed,
        ):
            log.flush()
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

    async def _open_listeners(self, stack: AsyncExitStack) -> list[_Listening]:
        """Open every listener the config asks for, closing them all on exit."""
        config = self.config
        listening: list[_Listening] = []
        port = config.port
        if port is not None:
            transport: Transport = "tls" if config.ssl_context else "tcp"
            for listener in await _open_tcp(stack, config):
                address = ListenAddress.of_listener(listener, transport)
                listening.append((self._accept_loop, address, listener))
                port = address.port
        for path in config.unix:
            listener = await _open_unix(stack, path, config)
            address = ListenAddress("unix", path=path)
            listening.append((self._accept_loop, address, listener))
        if config.udp:
            if port is None:
                raise ValueError("UDP echo needs a port (it shares the TCP one)")
            for sock in await open_udp(stack, config.hosts, port, config.reuse_port):
                host, bound_port = sock.getsockname()[:2]
                address = ListenAddress("udp", host, bound_port)
                listening.append((self._udp_loop, address, sock))
        return listening

    async def _udp_loop(
        self, sock: socket.socket, address: ListenAddress, connections: TaskGroup
    ) -> None:
        config = self.config
        guard = UDPGuard(
            blocked_ports=config.udp_blocked_ports,
            packets=config.udp_rate,
            data=config.udp_byte_rate,
        )
        await serve_udp(sock, guard, self._stats)

    async def _accept_loop(
        self, listener: SocketListener, address: ListenAddress, connections: TaskGroup
    ) -> None:
        """Accept from ``listener``'s socket until cancelled or closed.

        Every connection pending when the socket is readable is accepted at once,
        up to :data:`ACCEPT_BATCH` before the loop lets other tasks run, as libuv
        and nginx do: a newcomer waits one trip round the event loop behind the
        busy connections, not one trip per client ahead of it. Nothing here can
        fail because of one client: the accepted socket goes straight to its own
        task, where everything else is done.
        """
        sock: socket.socket = listener.extra(SocketAttribute.raw_socket)
        handle = self._handle
        limit = self._limit
        per_source = self.config.per_source_limit
        batch = 0
        while True:
            if limit is not None:
                try:
                    limit.acquire_nowait()
                except anyio.WouldBlock:
                    self._log_at_limit(
                        "%s: at the connection limit (%d); new clients wait",
                        address,
                        self.config.max_connections,
                    )
                    await limit.acquire()
            try:
                client, peer = _accept(sock)
            except BlockingIOError:
                if limit is not None:
                    limit.release()
                batch = 0
                try:
                    await anyio.wait_readable(sock)
                except ClosedResourceError:
                    return
                continue
            except OSError as exc:
                if limit is not None:
                    limit.release()
                if sock.fileno() < 0:
                    return  # closed
                await self._accept_failed(exc)
                continue
            source = _source_of(peer) if per_source is not None else None
            if source is not None and not self._admit(source, client, peer):
                continue
            connections.start_soon(handle, client, peer, source)
            batch += 1
            if batch >= ACCEPT_BATCH:
                batch = 0
                await anyio.lowlevel.checkpoint()

    def _admit(self, source: str, client: socket.socket, peer: Any) -> bool:
        """Count a new connection from ``source``; false if it must not start now.

        Under the per-source limit it starts at once. Over it, it waits, accepted
        but not read (as a client waits in the listen queue at the global
        limit), until one of its source's connections closes; up to as many
        waiters as the limit, past which it is reset. Waiters hold their slot of
        the global limit, so a source holds at most twice its limit in all, and
        a flood of connections that are already dead (reset before the server
        got to them) delays the next client instead of turning it away.
        """
        limit = cast(int, self.config.per_source_limit)
        held = self._sources.get(source, 0)
        if held < limit:
            self._sources[source] = held + 1
            return True
        waiting = self._waiting.setdefault(source, deque())
        if len(waiting) >= limit:
            self._prune(waiting)
        if len(waiting) < limit:
            waiting.append((client, peer))
            self._log_source_waits(
                "%s: at the per-source limit (%d connections); a client waits",
                source,
                limit,
            )
        else:
            self._refuse(client, source)
        return False

    def _release_source(self, source: str) -> None:
        """A connection from ``source`` ended: start its next waiter, if any."""
        waiting = self._waiting.get(source)
        if waiting:
            client, peer = waiting.popleft()
            if not waiting:
                del self._waiting[source]
            if self._connections is not None:
                self._connections.start_soon(self._handle, client, peer, source)
                return
            self._waiting.setdefault(source, deque()).appendleft((client, peer))
        held = self._sources[source] - 1
        if held:
            self._sources[source] = held
        else:
            del self._sources[source]

    def _prune(self, waiting: deque[tuple[socket.socket, Any]]) -> None:
        """Drop the waiters whose peer has reset them already (one peek each)."""
        for _ in range(len(waiting)):
            client, peer = waiting.popleft()
            try:
                client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            except OSError:
                self._stats.total_connections += 1
                self._stats.errors["reset"] += 1
                self._stats.changed()
                client.close()
                if self._limit is not None:
                    self._limit.release()
                continue
            waiting.append((client, peer))

    def _close_waiters(self) -> None:
        """Close the connections still waiting for a per-source slot (a stop)."""
        for waiting in self._waiting.values():
            for client, _ in waiting:
                client.close()
                if self._limit is not None:
                    self._limit.release()
        self._waiting.clear()

    def _refuse(self, client: socket.socket, source: str) -> None:
        """Reset a connection over the per-source limit and its waiters, at once."""
        if self._limit is not None:
            self._limit.release()
        self._stats.total_connections += 1
        self._stats.errors["source-limit"] += 1
        self._stats.changed()
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        client.close()
        self._log_refused(
            "%s: over the per-source limit (%d connections, as many waiting); reset",
            source,
            self.config.per_source_limit,
        )

    async def _accept_failed(self, exc: OSError) -> None:
        self._stats.errors["accept"] += 1
        self._stats.changed()
        if exc.errno in CONNECTION_ERRNOS:
            logger.debug("accept: a pending connection failed (%s)", _describe(exc))
            return
        logger.warning(
            "accept failed (%s); pausing %d ms",
            _describe(exc),
            ACCEPT_BACKOFF * 1000,
        )
        await anyio.sleep(ACCEPT_BACKOFF)

    async def _watch_idle(self, limit: float) -> None:
        """Close connections that moved no byte for ``limit`` seconds.

        One task for the whole server, waking a few times per limit: the hot
        path pays nothing (no cancel scope, deadline or timer per chunk), and a
        connection is closed between ``limit`` and ``limit * 1.25`` after its last
        byte, or at most one second late. A byte has moved when the server
        received it, or when the peer took it: the server's own streams count
        what the kernel takes from a send as it happens, and the kernel's send
        queue says how much of that the peer has not taken yet. So a large send
        draining slowly to a slow reader is progress, and only a peer that
        stopped reading is idle.
        """
        tick = min(1.0, limit / 4)
        open_connections = self._stats.open
        while True:
            await anyio.sleep(tick)
            now = anyio.current_time()
            for state in open_connections:
                wire = state.wire
                written = state.sent if wire is None else wire.bytes_written()
                moved = state.received + written - _unread(state.fd)
                if moved != state.seen:
                    state.seen = moved
                    state.since = now
                elif now - state.since >= limit and not state.timed_out:
                    state.timed_out = True
                    state.scope.cancel()

    async def _handle(
        self, client: socket.socket, peer_address: Any, source: str | None
    ) -> None:
        """Serve one accepted socket. Whatever goes wrong ends this connection only.

        Everything done for the connection happens in here, inside one ``try``:
        making its stream, the TLS handshake, the user's ``wrap_stream``, the
        echo, logging and closing. Only cancellation (a stop) leaves this task.
        """
        config = self.config
        state = self._stats.opened(anyio.current_time())
        state.fd = client.fileno()
        start = state.since
        peer = _format_peer(peer_address)
        stream: SocketStream | None = None
        conn: ByteStream | None = None
        try:
            logger.debug("%s: connected", peer)
            with CancelScope() as state.scope:
                try:
                    conn = stream = await adopt(client)
                    if isinstance(stream, _Progress):
                        state.wire = stream
                    if config.ssl_context is not None:
                        tls = await self._handshake(stream, config.ssl_context, peer)
                        if tls is None:
                            return
                        conn = tls
                    await self._echo(conn, state)
                except (
                    BrokenResourceError,
                    ClosedResourceError,
                    EndOfStream,
                    OSError,
                ) as exc:
                    self._stats.errors["reset"] += 1
                    logger.debug("%s: connection lost (%s)", peer, _describe(exc))
                except Exception:
                    self._stats.errors["handler"] += 1
                    self._log_handler_failed(
                        "%s: handler failed; closing this connection",
                        peer,
                        exc_info=True,
                    )
            if state.timed_out:
                self._stats.errors["timeout"] += 1
                logger.debug("%s: idle for %gs; closed", peer, config.idle_timeout)
        finally:
            # Bookkeeping first: closing under a cancelled scope (a drain that
            # ran out) raises the cancellation once the stream is closed.
            self._stats.closed(state)
            if self._limit is not None:
                self._limit.release()
            if source is not None:
                self._release_source(source)
            logger.debug(
                "%s: closed, %d bytes in, %d bytes out, %.3fs",
                peer,
                state.received,
                state.sent,
                anyio.current_time() - start,
            )
            if conn is None:
                client.close()
            else:
                await _close(conn)

    async def _echo(self, conn: ByteStream, state: ByteCounter) -> None:
        config = self.config
        wrap = config.wrap_stream
        if wrap is None:
            await echo(conn, receive_size=config.receive_size, counts=state)
        else:
            # Count what passes on the wire, beneath the wrapper.
            await echo(wrap(_Connection(conn, state)), receive_size=config.receive_size)

    async def _handshake(
        self, stream: SocketStream, context: ssl.SSLContext, peer: str
    ) -> TLSStream | None:
        """The TLS stream over ``stream``, or ``None`` (logged) if handshake fails."""
        try:
            with anyio.fail_after(self.config.tls_handshake_timeout):
                return await TLSStream.wrap(
                    stream, server_side=True, ssl_context=context
                )
        except TimeoutError:
            reason = f"no handshake within {self.config.tls_handshake_timeout:g}s"
        except (ssl.SSLError, BrokenResourceError, EndOfStream, OSError) as exc:
            reason = _describe(exc)
        self._stats.errors["tls"] += 1
        self._log_tls_failed("%s: TLS handshake failed: %s", peer, reason)
        return None


@contextlib.contextmanager
def _single_exception() -> Generator[None, None, None]:
    """Let one exception out of nested task groups as itself, not in groups.

    A ``KeyboardInterrupt`` (or a failure of the server's own) raised inside the
    server's task groups reaches the caller wrapped in one exception group per
    group; ``except KeyboardInterrupt`` around ``trio.run(anyecho.serve)`` would
    then miss it. Several exceptions at once stay grouped.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, BaseExceptionGroup):
            raise
        context = leaf.__context__
        try:
            raise leaf
        finally:
            leaf.__context__ = context
            del leaf


async def _close(stream: ByteStream) -> None:
    """Close ``stream`` at once; a peer that is already gone is no error."""
    try:
        await anyio.aclose_forcefully(stream)
    except Exception:  # the connection is over either way
        logger.debug("closing a connection failed", exc_info=True)


@runtime_checkable
class _Progress(Protocol):
    """A stream that counts the bytes the kernel has taken from its sends."""

    def bytes_written(self) -> int: ...


def _unread(fd: int) -> int:
    """Bytes in a socket's send queue that its peer has not taken yet (Linux).

    ``SIOCOUTQ``: for TCP, what the peer has not acknowledged; for a Unix
    socket, what the peer has not read. ``0`` where the system cannot say.
    """
    try:
        return struct.unpack("i", fcntl.ioctl(fd, _SIOCOUTQ, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]
    except OSError:
        return 0


_SIOCOUTQ: Final = getattr(termios, "TIOCOUTQ", 0x5411)

#: How the accept loop accepts (a seam for tests that fake accept errors).
_accept = socket.socket.accept

#: ``SO_LINGER`` on, zero seconds: ``close()`` resets the connection.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


def _source_of(peer: Any) -> str | None:
    """The address a per-source limit counts ``peer`` under (``None``: none)."""
    if not isinstance(peer, tuple):
        return None  # a Unix socket peer: the same machine
    host = str(peer[0])
    return host.removeprefix("::ffff:") if host.startswith("::ffff:") else host


def _format_peer(peer: Any) -> str:
    """``peer`` (as ``accept()`` returned it) for logs; never fails."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    if isinstance(peer, str | bytes) and peer:
        return f"unix:{peer!r}" if isinstance(peer, bytes) else f"unix:{peer}"
    return "unix-peer"


def _check_event_loop() -> None:
    """Refuse, up front, an asyncio loop that cannot serve AnyIO streams.

    AnyIO's asyncio listeners need ``loop.connect_accepted_socket``; a loop that
    leaves it unimplemented would otherwise fail on the first client.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # Trio
    method = getattr(type(loop), "connect_accepted_socket", None)
    if method in (None, asyncio.AbstractEventLoop.connect_accepted_socket):
        name = f"{type(loop).__module__}.{type(loop).__qualname__}"
        raise BackendUnavailableError(
            f"event loop {name} cannot serve: it does not implement "
            "connect_accepted_socket"
        )


Transport = Literal["tcp", "tls", "unix", "udp"]
_Listening = tuple[Callable[..., Coroutine[Any, Any, None]], ListenAddress, Any]


async def _open_tcp(
    stack: AsyncExitStack, config: ServerConfig
) -> list[SocketListener]:
    hosts: tuple[str | None, ...] = config.hosts or (None,)
    port = config.port or 0
    listeners: list[SocketListener] = []
    for host in hosts:
        try:
            multi = await anyio.create_tcp_listener(
                local_host=host,
                local_port=port,
                backlog=config.backlog,
                reuse_port=config.reuse_port,
            )
        except OSError as exc:
            raise _listen_error(exc, host, port) from None
        stack.push_async_callback(multi.aclose)
        listeners.extend(cast(Sequence[SocketListener], multi.listeners))
        if port == 0:  # every further host gets the port the first one got
            port = ListenAddress.of_listener(multi.listeners[0]).port
    return listeners


async def _open_unix(
    stack: AsyncExitStack, path: str, config: ServerConfig
) -> SocketListener:
    """A Unix socket listener at ``path``; the file goes when the stack closes."""
    _check_unix_path(path)
    try:
        listener = await anyio.create_unix_listener(
            path, mode=config.unix_mode, backlog=config.backlog
        )
    except OSError as exc:
        raise ListenError(
            exc.errno, f"cannot listen on unix:{path}: {exc.strerror or exc}"
        ) from None
    inode = os.stat(path).st_ino
    stack.callback(_remove_socket_file, path, inode)
    stack.push_async_callback(listener.aclose)
    return listener


def _check_unix_path(path: str) -> None:
    """Refuse a path a live server holds or a non-socket file occupies.

    A socket file nobody listens on (left by a server that died) is stale, and
    the listener replaces it.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(
            exc.errno, f"cannot listen on unix:{path}: {exc.strerror}"
        ) from None
    if not stat.S_ISSOCK(mode):
        raise ListenError(
            errno.EEXIST,
            f"cannot listen on unix:{path}: a file that is not a socket is there",
        )
    with socket.socket(socket.AF_UNIX) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return  # stale
        except BlockingIOError:
            pass  # its listen queue is full: very much alive
        except OSError as exc:
            raise ListenError(
                exc.errno, f"cannot listen on unix:{path}: {exc.strerror}"
            ) from None
    raise ListenError(
        errno.EADDRINUSE, f"cannot listen on unix:{path}: a live server listens there"
    )


def _remove_socket_file(path: str, inode: int) -> None:
    """Remove our socket file, unless something else has replaced it since."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


async def open_udp(
    stack: AsyncExitStack,
    hosts: tuple[str, ...] | None,
    port: int,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """UDP sockets bound to ``port`` on each host (every interface for ``None``).

    Non-blocking, and closed (after :func:`anyio.notify_closing`) when the stack
    closes.
    """
    addresses: list[tuple[socket.AddressFamily, tuple[Any, ...], bool]] = []
    if hosts is None:
        if socket.has_dualstack_ipv6():
            addresses.append((socket.AF_INET6, ("::", port), False))
        else:
            addresses.append((socket.AF_INET, ("0.0.0.0", port), True))
    else:
        for host in hosts:
            try:
                infos = await anyio.getaddrinfo(
                    host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
                )
            except OSError as exc:
                raise _listen_error(exc, host, port) from None
            for family, _, _, _, sockaddr in sorted(set(infos)):
                addresses.append((family, sockaddr, True))
    sockets: list[socket.socket] = []
    for family, sockaddr, v6only in addresses:
        raw = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            if reuse_port:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            raw.bind(sockaddr)
        except OSError as exc:
            raw.close()
            error = _listen_error(exc, str(sockaddr[0]), port)
            raise ListenError(error.errno, f"udp: {error}") from None
        raw.setblocking(False)
        stack.callback(_close_socket, raw)
        sockets.append(raw)
    return sockets


def _close_socket(sock: socket.socket) -> None:
    """Close a socket a task may be waiting on (it then ends at once)."""
    anyio.notify_closing(sock)
    sock.close()


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
