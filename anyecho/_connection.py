"""One accepted connection, from its socket to its close, and the idle watchdog."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import socket
import ssl
import struct
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
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
from ._proxy import ProxyHeader, ProxyHeaderError, parse
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
        "peer",
        "scope",
        "seen",
        "since",
        "source",
        "timed_out",
        "wire",
    )

    def __init__(self, now: float, fd: int, peer: Any = None) -> None:
        super().__init__()
        self.opened_at = now
        #: the client's address (from the PROXY header, behind a proxy)
        self.peer = peer
        #: what to hand back to the admission when it ends: the source it is
        #: counted under (``None``: its global slot only), or ``_NOTHING``
        self.source: object = None
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


class _Replay(StreamWrapper):
    """A stream that first hands out bytes already read from it (those that came
    with the PROXY header), then receives as usual."""

    def __init__(self, stream: ByteStream, data: bytes) -> None:
        super().__init__(stream)
        self._data = data

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = self._data
        if not data:
            return await self.stream.receive(max_bytes)
        await anyio.lowlevel.checkpoint()
        self._data = data[max_bytes:]
        return data[:max_bytes]


#: The per-source bookkeeping is already settled: nothing to release at the end.
_NOTHING: Final = object()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _source_host(peer: Any) -> str | None:
    """The address a per-source limit counts ``peer`` under (``None``: Unix)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]).removeprefix("::ffff:")
    return None


def trusted(peer: Any, networks: tuple[Network, ...]) -> bool:
    """Whether ``peer`` (as ``accept()`` gave it) may send a PROXY header.

    A Unix socket peer is on this machine, behind the socket file's permissions:
    trusted. An IPv4-mapped IPv6 address is checked as the IPv4 address it is.
    """
    host = _source_host(peer)
    if host is None:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return any(address in network for network in networks)


class Connections:
    """Serves accepted sockets for one server: each in its own error boundary.

    :param config: the server's settings
    :param stats: its counters
    :param released: called with a connection's source address once it ends
        (``None`` for a source not counted)
    :param faults: the server's faults
    :param claim: counts a connection under the real client's address once its
        PROXY header is read (see :meth:`anyecho._accept.Admission.claim`)
    """

    def __init__(
        self,
        config: ServerConfig,
        stats: ServerStats,
        released: Callable[[str | None], None],
        faults: FaultControl,
        claim: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.config = config
        self._faults = faults
        self._stats = stats
        self._released = released
        self._claim = claim
        self._open: set[ConnectionState] = set()
        self._proxies: tuple[Network, ...] | None = (
            config.proxy_networks if config.proxy_protocol else None
        )
        self._log_tls_failed = LogLimiter(logger, logging.INFO, "failed TLS handshakes")
        self._log_failed = LogLimiter(logger, logging.ERROR, "handler failures")
        self._log_proxy = LogLimiter(
            logger, logging.WARNING, "connections ended for their PROXY header"
        )

    @property
    def proxied(self) -> Callable[[Any], bool] | None:
        """Whether a peer is a trusted proxy; ``None`` without proxy protocol."""
        proxies = self._proxies
        if proxies is None:
            return None
        return lambda peer: trusted(peer, proxies)

    def flush_logs(self) -> None:
        self._log_tls_failed.flush()
        self._log_failed.flush()
        self._log_proxy.flush()

    async def serve(self, client: socket.socket, peer: Any, source: str | None) -> None:
        """Serve one accepted socket. Whatever goes wrong ends this connection only.

        Everything done for the connection happens in here, inside one ``try``:
        making its stream, the TLS handshake, the user's ``wrap_stream``, the
        faults, the echo, logging and closing. Only cancellation (a stop) leaves
        this task.
        """
        state = ConnectionState(anyio.current_time(), client.fileno(), peer)
        self._stats.opened(state)
        self._open.add(state)
        faults = self._faults.join(state)
        name = format_peer(peer)
        conn: ByteStream | None = None
        state.source = source
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
                    if self._proxies is not None:
                        proxied, name = await self._behind_proxy(stream, state, name)
                        if proxied is None:
                            _reset(client)
                            return
                        conn = proxied
                    context = self.config.ssl_context
                    if context is not None:
                        tls = await self._handshake(conn, context, name)
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
            self._ended(state, faults, name)
            if conn is None:
                client.close()
            else:
                await _close(conn)

    def _ended(
        self, state: ConnectionState, faults: ConnectionFaults, name: str
    ) -> None:
        """Count a connection that ends, and give its slot back."""
        self._faults.leave(faults)
        self._open.discard(state)
        duration = anyio.current_time() - state.opened_at
        self._stats.closed(state, duration)
        if state.source is not _NOTHING:
            source = state.source if isinstance(state.source, str) else None
            self._released(source)
        logger.debug(
            "%s: closed, %d bytes in, %d bytes out, %.3fs",
            name,
            state.received,
            state.sent,
            duration,
        )

    async def _behind_proxy(
        self, stream: SocketStream, state: ConnectionState, name: str
    ) -> tuple[ByteStream | None, str]:
        """Read the PROXY header; count the connection under the real client.

        :returns: the stream to serve (``None`` to end the connection), and the
            connection's name for the logs
        """
        assert self._proxies is not None
        if not trusted(state.peer, self._proxies):
            # Ended at once: its bytes, header or not, are never looked at.
            self._proxy_failed(name, "not a trusted proxy")
            return None, name
        proxied = await self._proxy_header(stream, name)
        if proxied is None:
            return None, name
        header, rest = proxied
        if header.source is not None:
            state.peer = header.source
            name = f"{format_peer(header.source)} via {name}"
            logger.debug("%s: PROXY header read", name)
        conn: ByteStream = _Replay(stream, rest) if rest else stream
        host = _source_host(state.peer)
        if host is None or self._claim is None:
            return conn, name
        state.source = _NOTHING  # the claim holds nothing until it succeeds
        if not await self._claim(host):
            return None, name
        state.source = host
        return conn, name

    def _proxy_failed(self, name: str, reason: str) -> None:
        self._stats.error("proxy")
        self._log_proxy("%s: %s; closed", name, reason)

    async def _proxy_header(
        self, stream: ByteStream, name: str
    ) -> tuple[ProxyHeader, bytes] | None:
        """The PROXY header at the start of ``stream``, and the bytes that came
        after it; ``None`` (counted and logged) if there is none in time, and
        ``None`` (not an error) for a connection closed before its first byte.

        Nothing of what was read is echoed when the header is bad: the
        connection just ends.
        """
        timeout = self.config.proxy_header_timeout
        buffer = bytearray()
        reason = f"no PROXY header within {timeout:g}s"
        with anyio.move_on_after(timeout):
            try:
                while (header := parse(buffer)) is None:
                    buffer += await stream.receive(self.config.receive_size)
            except ProxyHeaderError as exc:
                reason = f"bad PROXY header ({exc})"
            except EndOfStream:
                if not buffer:
                    # Connected and closed without a byte: a port check (as
                    # AWS NLB and Kubernetes TCP probes make), nothing to echo.
                    logger.debug("%s: closed before any PROXY header", name)
                    return None
                reason = "closed in the middle of its PROXY header"
            else:
                return header, bytes(buffer[header.length :])
        self._proxy_failed(name, reason)
        return None

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
        self, stream: ByteStream, context: ssl.SSLContext, name: str
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


def _reset(client: socket.socket) -> None:
    """Make closing ``client`` reset the connection."""
    with contextlib.suppress(OSError):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


_LINGER_RESET: Final = struct.pack("ii", 1, 0)


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
