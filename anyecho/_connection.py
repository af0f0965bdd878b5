"""One accepted connection, from its socket to its close, and the idle watchdog."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import ssl
import struct
import termios
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Protocol, runtime_checkable

import anyio
from anyio import BrokenResourceError, CancelScope, ClosedResourceError, EndOfStream
from anyio.abc import ByteStream, SocketStream
from anyio.streams.tls import TLSStream

from ._config import ServerConfig
from ._echo import ByteCounts, echo
from ._errors import describe
from ._fastpath import adopt
from ._logs import LogLimiter
from ._stats import ServerStats
from ._wrap import StreamWrapper
from .faults._live import ConnectionFaults, FaultControl, hold, refuse

__all__ = ["ConnectionState", "Connections"]

logger = logging.getLogger("anyecho")


@runtime_checkable
class _Progress(Protocol):
    """A stream that counts the bytes the kernel has taken from its sends."""

    def bytes_written(self) -> int: ...


class ConnectionState(ByteCounts):
    """One open connection: its byte counts and what the idle watchdog needs.

    The hot path only adds to ``received`` and ``sent``; the watchdog reads the
    rest now and then, so timeouts cost nothing per chunk.
    """

    __slots__ = (
        "echoed",
        "fd",
        "opened_at",
        "scope",
        "seen",
        "since",
        "timed_out",
        "wire",
    )

    def __init__(self, now: float, fd: int) -> None:
        super().__init__()
        self.opened_at = now
        #: the socket's descriptor, for the kernel's send queue
        self.fd = fd
        #: when progress was last seen, and how much there had been by then
        self.since = now
        self.seen = 0
        #: the connection's cancel scope, which the watchdog cancels
        self.scope: CancelScope | None = None
        self.timed_out = False
        #: the socket stream, when it counts what the kernel took from its sends
        self.wire: _Progress | None = None
        #: called once every byte received has been sent back, after :meth:`watch`
        self.echoed: Callable[[], None] | None = None

    def watch(self, echoed: Callable[[], None]) -> None:
        """Call ``echoed`` as soon as every byte received has been sent back.

        The echo is then between two chunks: cancelling it there loses nothing.
        Until then (and only then) each chunk pays for a property: the class of
        this object changes to :class:`_Watched` and back.
        """
        self.echoed = echoed
        self.__class__ = _Watched

    def progress(self) -> int:
        """A figure that changes whenever a byte moves, either way.

        Bytes received, plus bytes the peer has taken: what the kernel took from
        the sends (counted by the stream as it goes, or finished sends where the
        stream cannot count), less what still waits in the kernel's send queue.
        """
        wire = self.wire
        written = self.sent if wire is None else wire.bytes_written()
        return self.received + written - _unread(self.fd)


#: The storage of :attr:`ByteCounts.sent`, beneath :class:`_Watched`'s property.
_SENT: Any = ByteCounts.__dict__["sent"]


class _Watched(ConnectionState):
    """A :class:`ConnectionState` that tells when the echo has caught up."""

    __slots__ = ()

    @property
    def sent(self) -> int:
        return int(_SENT.__get__(self))

    @sent.setter
    def sent(self, value: int) -> None:
        _SENT.__set__(self, value)
        if value == self.received:
            self.__class__ = ConnectionState  # type: ignore[assignment]
            echoed, self.echoed = self.echoed, None
            if echoed is not None:
                echoed()


def _unread(fd: int) -> int:
    """Bytes in a socket's send queue that its peer has not taken yet (Linux).

    ``SIOCOUTQ``: for TCP, what the peer has not acknowledged; for a Unix
    socket, what the peer has not read. ``0`` where the system cannot say.
    """
    try:
        queued = fcntl.ioctl(fd, _SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", queued)[0])


_SIOCOUTQ: Final = getattr(termios, "TIOCOUTQ", 0x5411)


class _Counted(StreamWrapper):
    """The connection's stream beneath a ``wrap_stream`` wrapper, counting bytes."""

    def __init__(self, stream: ByteStream, counts: ByteCounts) -> None:
        super().__init__(stream)
        self._counts = counts
        self._receive = stream.receive
        self._send = stream.send

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._receive(max_bytes)
        self._counts.received += len(data)
        return data

    async def send(self, item: bytes) -> None:
        await self._send(item)
        self._counts.sent += len(item)


class Connections:
    """Serves accepted sockets for one server: each in its own error boundary.

    :param config: the server's settings
    :param stats: its counters
    :param released: called with a connection's source address once it ends
        (``None`` for a source not counted)
    :param faults: the server's faults
    """

    def __init__(
        self,
        config: ServerConfig,
        stats: ServerStats,
        released: Callable[[str | None], None],
        faults: FaultControl,
    ) -> None:
        self.config = config
        self._faults = faults
        self._stats = stats
        self._released = released
        self._open: set[ConnectionState] = set()
        self._log_tls_failed = LogLimiter(logger, logging.INFO, "failed TLS handshakes")
        self._log_failed = LogLimiter(logger, logging.ERROR, "handler failures")

    def flush_logs(self) -> None:
        self._log_tls_failed.flush()
        self._log_failed.flush()

    async def serve(self, client: socket.socket, peer: Any, source: str | None) -> None:
        """Serve one accepted socket. Whatever goes wrong ends this connection only.

        Everything done for the connection happens in here, inside one ``try``:
        making its stream, the TLS handshake, the user's ``wrap_stream``, the
        faults, the echo, logging and closing. Only cancellation (a stop) leaves
        this task.
        """
        state = ConnectionState(anyio.current_time(), client.fileno())
        self._stats.opened(state)
        self._open.add(state)
        faults = self._faults.join(state)
        name = format_peer(peer)
        conn: ByteStream | None = None
        try:
            logger.debug("%s: connected", name)
            with CancelScope() as state.scope:
                faults.scope = state.scope
                async with self._boundary(name, faults):
                    if faults.turned_away:
                        await self._turn_away(client, faults, name)
                        return
                    conn = stream = await adopt(client)
                    if isinstance(stream, _Progress):
                        state.wire = stream
                    context = self.config.ssl_context
                    if context is not None:
                        tls = await self._handshake(stream, context, name)
                        if tls is None:
                            return
                        conn = tls
                    await self._echo(conn, state, faults)
            if faults.interrupted and conn is not None and not state.timed_out:
                # Faults reached the connection: it goes on under them.
                with CancelScope() as state.scope:
                    faults.scope = state.scope
                    async with self._boundary(name, faults):
                        await self._echo_faulted(conn, state, faults)
            if state.timed_out:
                self._stats.error("timeout")
                logger.debug("%s: idle for %gs; closed", name, self.config.idle_timeout)
        finally:
            # Bookkeeping first: closing under a cancelled scope (a drain that
            # ran out) raises the cancellation once the stream is closed.
            self._faults.leave(faults)
            self._open.discard(state)
            self._stats.closed(state)
            self._released(source)
            logger.debug(
                "%s: closed, %d bytes in, %d bytes out, %.3fs",
                name,
                state.received,
                state.sent,
                anyio.current_time() - state.opened_at,
            )
            if conn is None:
                client.close()
            else:
                await _close(conn)

    @contextlib.asynccontextmanager
    async def _boundary(
        self, name: str, faults: ConnectionFaults
    ) -> AsyncIterator[None]:
        """The error boundary of one connection: errors are counted and logged.

        A connection lost after a fault cut it short is no error: the fault is
        counted already.
        """
        try:
            yield
        except (BrokenResourceError, ClosedResourceError, EndOfStream, OSError) as exc:
            if faults.cut is None:
                self._stats.error("reset")
            logger.debug("%s: connection lost (%s)", name, describe(exc))
        except Exception:
            self._stats.error("handler")
            self._log_failed(
                "%s: handler failed; closing this connection", name, exc_info=True
            )

    async def _turn_away(
        self, client: socket.socket, faults: ConnectionFaults, name: str
    ) -> None:
        """The ``refuse`` and ``blackhole`` faults: never serve the connection."""
        assert faults.faults is not None
        if faults.faults.refuse:
            self._faults.count("refuse")
            logger.debug("%s: fault: refused (reset)", name)
            refuse(client)
            return
        self._faults.count("blackhole")
        logger.debug("%s: fault: blackhole", name)
        client.setblocking(False)
        await hold(client)

    async def _echo(
        self, conn: ByteStream, state: ConnectionState, faults: ConnectionFaults
    ) -> None:
        if self.config.wrap_stream is None and not (
            self._faults.engaged or faults.needs_stream or faults.cut
        ):
            # No fault has ever shaped a stream: the plain echo, until faults
            # reach it (which cancel it between two chunks, to go on below).
            faults.echoing = True
            faults.watch = state.watch
            await echo(conn, receive_size=self.config.receive_size, counts=state)
            faults.echoing = False
            return
        await self._echo_faulted(conn, state, faults)

    async def _echo_faulted(
        self, conn: ByteStream, state: ConnectionState, faults: ConnectionFaults
    ) -> None:
        # Count what passes on the wire, beneath the wrapper and the faults.
        counted = _Counted(conn, state)
        faults.interrupted = False
        if faults.cut is None:
            wrap = self.config.wrap_stream
            stream = counted if wrap is None else wrap(counted)
            with CancelScope() as scope:
                faults.scope = scope
                await echo(faults.stream(stream), receive_size=self.config.receive_size)
            faults.scope = state.scope
            if not scope.cancelled_caught:
                return
        if faults.cut is not None:
            await faults.finish_cut(counted)

    async def _handshake(
        self, stream: SocketStream, context: ssl.SSLContext, name: str
    ) -> TLSStream | None:
        """The TLS stream over ``stream``, or ``None`` (logged) if handshake fails."""
        timeout = self.config.tls_handshake_timeout
        try:
            with anyio.fail_after(timeout):
                return await TLSStream.wrap(
                    stream, server_side=True, ssl_context=context
                )
        except TimeoutError:
            reason = f"no handshake within {timeout:g}s"
        except (ssl.SSLError, BrokenResourceError, EndOfStream, OSError) as exc:
            reason = describe(exc)
        self._stats.error("tls")
        self._log_tls_failed("%s: TLS handshake failed: %s", name, reason)
        return None

    async def watch_idle(self, limit: float) -> None:
        """Close connections that moved no byte for ``limit`` seconds.

        One task for the whole server, waking a few times per limit: the hot
        path pays nothing (no cancel scope, deadline or timer per chunk), and a
        connection is closed between ``limit`` and ``limit * 1.25`` after its last
        byte, or at most one second late. A byte has moved when the server
        received it, or when the peer took it (see
        :meth:`ConnectionState.progress`): a large send draining slowly to a slow
        reader is progress, and only a peer that stopped reading is idle.
        """
        tick = min(1.0, limit / 4)
        while True:
            await anyio.sleep(tick)
            now = anyio.current_time()
            for state in self._open:
                moved = state.progress()
                if moved != state.seen:
                    state.seen = moved
                    state.since = now
                elif now - state.since >= limit and not state.timed_out:
                    state.timed_out = True
                    if state.scope is not None:
                        state.scope.cancel()


async def _close(stream: ByteStream) -> None:
    """Close ``stream`` at once; a peer that is already gone is no error."""
    try:
        await anyio.aclose_forcefully(stream)
    except Exception:  # the connection is over either way
        logger.debug("closing a connection failed", exc_info=True)


def format_peer(peer: Any) -> str:
    """``peer`` (as ``accept()`` returned it) for logs; never fails."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    if isinstance(peer, str | bytes) and peer:
        return f"unix:{peer!r}" if isinstance(peer, bytes) else f"unix:{peer}"
    return "unix-peer"
