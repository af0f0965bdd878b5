"""One accepted connection, from its socket to its close; the registry of open
connections (to list, close or reset them), and the idle watchdog."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import logging
import socket
import ssl
import struct
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, cast, runtime_checkable

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
from ._recording import EndReason, Recorder, Recording, RecordingStream
from ._sockets import reset_on_close
from ._stats import ServerStats
from ._wrap import StreamWrapper
from .faults._live import ConnectionFaults, FaultControl, hold, refuse

__all__ = ["ConnectionInfo", "ConnectionState", "Connections", "StreamTransport"]

#: The transports a stream connection comes over.
StreamTransport = Literal["tcp", "tls", "unix"]

logger = logging.getLogger("anyecho")


@runtime_checkable
class _Progress(Protocol):
    """A stream that counts the bytes the kernel has taken from its sends."""

    def bytes_written(self) -> int: ...


@dataclass(frozen=True)
class ConnectionInfo:
    """One open stream connection, as :meth:`anyecho.EchoServer.connections` lists it.

    :param id: the connection's number: they count up from 1 in the order the
        server accepted them (to serve them), and are never reused while it runs
    :param peer: the client's address as the logs write it: ``127.0.0.1:50312``,
        ``[::1]:50312``, ``unix-peer``
    :param transport: ``tcp``, ``tls`` or ``unix``
    :param opened_at: when it was accepted, in seconds since the epoch
        (:func:`time.time`)
    :param age: seconds since then, on the server's clock (AnyIO's)
    :param bytes_received: bytes received from the client so far
    :param bytes_sent: bytes echoed back so far
    :param faulted: whether faults are applied to it (chosen when it opened)
    """

    id: int
    peer: str
    transport: StreamTransport
    opened_at: float
    age: float
    bytes_received: int
    bytes_sent: int
    faulted: bool


class ConnectionState(ByteCounts):
    """One open connection: its byte counts and what the idle watchdog needs.

    The hot path only adds to ``received`` and ``sent``; the watchdog reads the
    rest now and then, so timeouts cost nothing per chunk.
    """

    __slots__ = (
        "address",
        "echoed",
        "ending",
        "faults",
        "fd",
        "id",
        "opened_at",
        "opened_wall",
        "outcome",
        "peer",
        "scope",
        "seen",
        "since",
        "sock",
        "source",
        "timed_out",
        "transport",
        "wire",
    )

    def __init__(
        self,
        now: float,
        sock: socket.socket,
        peer: str = "",
        transport: StreamTransport = "tcp",
        address: Any = None,
    ) -> None:
        super().__init__()
        self.opened_at = now
        self.opened_wall = time.time()
        #: the registry's number for it (set once registered)
        self.id = 0
        #: the peer, for logs and listings (behind a proxy: "client via proxy")
        self.peer = peer
        #: the client's address as accept() gave it, or as the PROXY header named
        self.address = address
        #: what to hand back to the admission when it ends: the source it is
        #: counted under (``None``: its global slot only), or ``_NOTHING``
        self.source: object = None
        self.transport: StreamTransport = transport
        #: the accepted socket, to reset the connection on request
        self.sock = sock
        #: the socket's descriptor, for the kernel's send queue
        self.fd = sock.fileno()
        #: its part in the server's faults (set once it joined them)
        self.faults: ConnectionFaults | None = None
        #: ``closed`` or ``aborted`` once a close or reset was asked for
        self.ending: EndReason | None = None
        #: ``reset`` or ``error`` when its error boundary caught one
        self.outcome: EndReason | None = None
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

    def info(self, now: float) -> ConnectionInfo:
        return ConnectionInfo(
            id=self.id,
            peer=self.peer,
            transport=self.transport,
            opened_at=self.opened_wall,
            age=max(0.0, now - self.opened_at),
            bytes_received=self.received,
            bytes_sent=self.sent,
            faulted=self.faults is not None and self.faults.faults is not None,
        )

    def end(self, how: EndReason) -> bool:
        """Close (``closed``) or reset (``aborted``) the connection: its task
        ends it as a stop would. ``False`` if it is ending already."""
        if self.ending is not None or self.timed_out:
            return False
        self.ending = how
        if how == "aborted":
            reset_on_close(self.sock)
        if self.scope is not None:
            self.scope.cancel()
        return True


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
    """Serves accepted sockets for one server, each in its own error boundary;
    the registry of the open ones.

    :param config: the server's settings
    :param stats: its counters, which hold the registry of open connections
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
        self._proxies: tuple[Network, ...] | None = (
            config.proxy_networks if config.proxy_protocol else None
        )
        self._ids = itertools.count(1)
        #: the recordings, when the config asks for them
        self.recorder: Recorder | None = None
        if config.record:
            self.recorder = Recorder(
                config.record_max_bytes, config.record_max_connections
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

    @property
    def open(self) -> dict[int, ConnectionState]:
        """The open connections by id (the stats' registry: only this adds to it)."""
        return cast("dict[int, ConnectionState]", self._stats.open)

    def flush_logs(self) -> None:
        self._log_tls_failed.flush()
        self._log_failed.flush()
        self._log_proxy.flush()

    def new_id(self) -> int:
        """The id of the next connection: 1, 2, 3, ... in the order accepted."""
        return next(self._ids)

    def infos(self) -> list[ConnectionInfo]:
        """Every open connection, oldest first."""
        now = anyio.current_time()
        return [state.info(now) for _, state in sorted(self.open.items())]

    def end(self, number: int, how: EndReason) -> bool:
        """Close or reset connection ``number``; ``False`` if it is not open."""
        state = self.open.get(number)
        return state is not None and state.end(how)

    def end_all(self, how: EndReason) -> int:
        """Close or reset every open connection; how many were."""
        return sum(state.end(how) for state in list(self.open.values()))

    def _transport(self, client: socket.socket) -> StreamTransport:
        if client.family == socket.AF_UNIX:
            return "unix"
        return "tcp" if self.config.ssl_context is None else "tls"

    async def serve(
        self,
        client: socket.socket,
        peer: Any,
        source: str | None,
        number: int | None = None,
    ) -> None:
        """Serve one accepted socket. Whatever goes wrong ends this connection only.

        Everything done for the connection happens in here, inside one ``try``:
        making its stream, the TLS handshake, the user's ``wrap_stream``, the
        faults, the echo, logging and closing. Only cancellation (a stop) leaves
        this task.
        """
        name = format_peer(peer)
        state = ConnectionState(
            anyio.current_time(), client, name, self._transport(client), peer
        )
        state.source = source
        state.id = self.new_id() if number is None else number
        self._stats.opened(state.id, state)
        faults = state.faults = self._faults.join(state)
        recording = None
        if self.recorder is not None:
            recording = self.recorder.open(
                state.id, name, state.transport, state.opened_at
            )
        ended: EndReason = "stop"
        conn: list[ByteStream] = []  # the streams made, the outermost last
        try:
            logger.debug("%s: connected", name)
            ended = await self._serve(client, state, faults, recording, conn)
        finally:
            # Bookkeeping first: closing under a cancelled scope (a drain that
            # ran out) raises the cancellation once the stream is closed.
            self._ended(state, faults)
            if recording is not None:
                recording.end(ended)
            if not conn:
                client.close()
            elif state.ending == "closed":
                await _close_gracefully(conn[-1])
            else:
                await _close(conn[-1])

    def _ended(self, state: ConnectionState, faults: ConnectionFaults) -> None:
        """Count a connection that ends, and give its slot back."""
        self._faults.leave(faults)
        duration = anyio.current_time() - state.opened_at
        self._stats.closed(state.id, duration)
        if state.source is not _NOTHING:
            source = state.source if isinstance(state.source, str) else None
            self._released(source)
        logger.debug(
            "%s: closed, %d bytes in, %d bytes out, %.3fs",
            state.peer,
            state.received,
            state.sent,
            duration,
        )

    async def _serve(
        self,
        client: socket.socket,
        state: ConnectionState,
        faults: ConnectionFaults,
        recording: Recording | None,
        conn: list[ByteStream],
    ) -> EndReason:
        """Serve the connection in its error boundary; how it ended (a stop
        cancels it instead)."""
        name = state.peer
        ended: EndReason = "stop"
        stream: ByteStream | None = None
        with CancelScope() as state.scope:
            faults.scope = state.scope
            async with self._boundary(name, faults, state):
                if faults.turned_away:
                    await self._turn_away(client, faults, name)
                    return "fault"
                stream = await self._start(client, state, recording, conn)
                if stream is None:
                    return "error"
                if self._plain(faults):
                    # The plain echo, until faults reach it (which cancel it
                    # between two chunks, to go on below). Called from here,
                    # not from a helper coroutine: every frame between the task
                    # and ``echo`` is resumed and suspended again on every echo.
                    faults.echoing = True
                    faults.watch = state.watch
                    await echo(
                        stream, receive_size=self.config.receive_size, counts=state
                    )
                    faults.echoing = False
                else:
                    await self._echo_faulted(stream, state, faults)
                ended = "eof"
        if faults.interrupted and stream is not None and not state.timed_out:
            # Faults reached the connection: it goes on under them.
            with CancelScope() as state.scope:
                faults.scope = state.scope
                async with self._boundary(name, faults, state):
                    await self._echo_faulted(stream, state, faults)
                    ended = "eof"
        if state.outcome is not None:
            ended = state.outcome
        if state.timed_out:
            self._stats.error("timeout")
            logger.debug("%s: idle for %gs; closed", name, self.config.idle_timeout)
            return "timeout"
        if state.ending is not None:
            logger.debug("%s: %s on request", name, state.ending)
            return state.ending
        if faults.cut is not None:
            return "fault"
        return ended

    async def _start(
        self,
        client: socket.socket,
        state: ConnectionState,
        recording: Recording | None,
        conn: list[ByteStream],
    ) -> ByteStream | None:
        """The stream to echo on (after the PROXY header and TLS, recorded);
        ``None`` if the header or the TLS handshake failed. Each stream made
        goes into ``conn``, to be closed."""
        raw = await adopt(client)
        conn.append(raw)
        if isinstance(raw, _Progress):
            state.wire = raw
        stream: ByteStream = raw
        if self._proxies is not None:
            proxied = await self._behind_proxy(raw, state)
            if proxied is None:
                reset_on_close(client)
                return None
            stream = proxied
        context = self.config.ssl_context
        if context is not None:
            tls = await self._handshake(stream, context, state.peer)
            if tls is None:
                return None
            conn.append(tls)
            stream = tls
        if recording is not None:
            # Beneath the faults, after TLS: what the client sent.
            return RecordingStream(stream, recording)
        return stream

    @contextlib.asynccontextmanager
    async def _boundary(
        self, name: str, faults: ConnectionFaults, state: ConnectionState
    ) -> AsyncIterator[None]:
        """The error boundary of one connection: errors are counted and logged,
        and noted as how it ended (``state.outcome``).

        A connection lost after a fault cut it short is no error: the fault is
        counted already.
        """
        try:
            yield
        except (BrokenResourceError, ClosedResourceError, EndOfStream, OSError) as exc:
            state.outcome = "reset"
            if faults.cut is None:
                self._stats.error("reset")
            logger.debug("%s: connection lost (%s)", name, describe(exc))
        except Exception:
            state.outcome = "error"
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

    async def _behind_proxy(
        self, stream: SocketStream, state: ConnectionState
    ) -> ByteStream | None:
        """Read the PROXY header; count the connection under the real client,
        and name it so (``state.peer``: "client via proxy").

        :returns: the stream to serve, or ``None`` to end the connection
        """
        name = state.peer
        assert self._proxies is not None
        if not trusted(state.address, self._proxies):
            # Ended at once: its bytes, header or not, are never looked at.
            self._proxy_failed(name, "not a trusted proxy")
            return None
        proxied = await self._proxy_header(stream, name)
        if proxied is None:
            return None
        header, rest = proxied
        if header.source is not None:
            state.address = header.source
            state.peer = f"{format_peer(header.source)} via {name}"
            logger.debug("%s: PROXY header read", state.peer)
        conn: ByteStream = _Replay(stream, rest) if rest else stream
        host = _source_host(state.address)
        if host is None or self._claim is None:
            return conn
        state.source = _NOTHING  # the claim holds nothing until it succeeds
        if not await self._claim(host):
            return None
        state.source = host
        return conn

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

    def _plain(self, faults: ConnectionFaults) -> bool:
        """Whether the connection starts on the plain echo: no wrapper, and no
        fault has ever shaped a stream."""
        return self.config.wrap_stream is None and not (
            self._faults.engaged or faults.needs_stream or faults.cut
        )

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
            for state in self.open.values():
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


async def _close_gracefully(stream: ByteStream) -> None:
    """Close ``stream`` as the protocol closes (TLS: close_notify), within a
    second and whatever cancellation is under way; else at once."""
    with CancelScope(shield=True), anyio.move_on_after(1):
        try:
            await stream.aclose()
        except Exception:  # noqa: S110 - closed at once below
            pass
        else:
            return
    await _close(stream)


def format_peer(peer: Any) -> str:
    """``peer`` (as ``accept()`` returned it) for logs; never fails."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    if isinstance(peer, str | bytes) and peer:
        return f"unix:{peer!r}" if isinstance(peer, bytes) else f"unix:{peer}"
    return "unix-peer"
