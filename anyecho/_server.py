"""The server's lifecycle: open the sockets, serve them, stop gracefully.

The pieces live below it: :mod:`._sockets` binds the sockets, :mod:`._accept`
accepts from them within the connection limits, :mod:`._connection` serves each
connection and watches for idle ones, :mod:`._udp` serves datagrams.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import sys
from collections.abc import Callable, Generator, Mapping
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio import TASK_STATUS_IGNORED, CancelScope, create_task_group
from anyio.abc import TaskGroup, TaskStatus

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup
if TYPE_CHECKING:
    from typing_extensions import Unpack

from . import _sockets
from ._accept import Admission, Start, accept_loop
from ._backends import check_event_loop, current_backend_name
from ._checks import check_number
from ._config import ServerConfig, ServerOptions
from ._connection import ConnectionInfo, Connections
from ._memory import keep_freed_memory
from ._recording import Recorder, Recording
from ._sockets import ListenAddress, Transport
from ._stats import ServerState, ServerStats, StatsSnapshot
from ._udp import UDPFaultState, UDPGuard, serve_udp
from ._udpfaults import UdpFaults, udp_faults_from
from .faults import Faults
from .faults._live import FaultControl

__all__ = ["EchoServer", "serve"]

logger = logging.getLogger("anyecho")


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

    def __init__(
        self, config: ServerConfig | None = None, /, **options: Unpack[ServerOptions]
    ) -> None:
        if config is None:
            config = ServerConfig(**options)
        elif options:
            config = config.replace(**options)
        self.config: ServerConfig = config
        #: the addresses listened on, once :meth:`serve` is ready
        self.addresses: list[ListenAddress] = []
        self._stats = ServerStats()
        self._admission = Admission(
            config.max_connections,
            config.per_source_limit,
            self._stats,
            deferred=config.proxy_protocol,
        )
        self._faults = FaultControl(self._stats, config.faults)
        self._connections = Connections(
            config,
            self._stats,
            self._admission.release,
            self._faults,
            self._admission.claim,
        )
        self._accept_scope: CancelScope | None = None
        self._connections_scope: CancelScope | None = None
        self._stop_requested: float | None = None
        self._listening: anyio.Event | None = None
        self._draining: anyio.Event | None = None
        self._start_error: BaseException | None = None
        # The one holder of the UDP impairments in force, read by every UDP
        # socket for each datagram: set_udp_faults() swaps what it holds, and
        # whatever replaces the server's faults at run time goes through it.
        self._udp_faults = UDPFaultState(config.udp_faults)

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
    def state(self) -> ServerState:
        """``starting``, ``serving``, ``draining`` (a stop has begun) or
        ``stopped``."""
        return self._stats.state

    @property
    def ready(self) -> bool:
        """Whether the server accepts new clients and wants them: listening, and
        no stop begun. What ``/healthz`` reports (:mod:`anyecho.metrics`)."""
        return self._stats.state == "serving"

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

    @property
    def udp_faults(self) -> UdpFaults | None:
        """The UDP impairments in force now (``None``: none)."""
        return self._udp_faults.faults

    def set_udp_faults(self, faults: UdpFaults | Mapping[str, Any] | None) -> None:
        """Replace the UDP impairments, from the next datagram on; ``None`` clears.

        Safe at any time, before or while the server runs (from its event loop's
        thread). Each call restarts the draws from ``faults.seed``, so setting
        the same faults again replays the same impairments. Datagrams already
        held for a delay or a reorder still go out as decided. A mapping of the
        :class:`~anyecho.faults.UdpFaults` field names (decoded JSON) is accepted
        too.

        .. code-block:: python

            server.set_udp_faults(UdpFaults(drop=0.2, seed=7))
            ...
            server.set_udp_faults(None)  # a clean echo again

        :raises ValueError: for invalid faults (nothing changes then)
        """
        self._udp_faults.set(udp_faults_from(faults))

    @property
    def faults(self) -> Faults | None:
        """The faults injected now (``None``: none); see :meth:`set_faults`."""
        return self._faults.faults

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the faults the server injects, at once, while it runs.

        Which connections a change reaches:

        - **new connections**: always; ``fraction`` is drawn again from a new
          ``random.Random(seed)``, first for the open connections (in the order
          they opened), then for each new one.
        - **open connections**: for the stream faults (``delay``, ``jitter``,
          ``fragment``, ``throttle``, the ``read_*`` faults, ``slow_close``) from
          their next chunk (on Trio, a connection that never had such faults
          gets them once it has echoed its next chunk, unless the server started
          with ``faults=Faults()``), and for the cut-offs (``close_after``,
          ``reset_after``, ``stall_after`` and their ``*_seconds`` forms),
          whose byte counts and clocks start at the change. A cut-off that is
          due at once (``reset_after=0``, ``close_after_seconds=0``) cuts every
          chosen open connection now, even an idle one.
        - ``refuse`` and ``blackhole`` concern accepting: they reach new
          connections only. ``pause_accepting`` stops the accept loops at once.

        A cut is final: clearing the faults does not revive a connection that
        was closed, reset or stalled. Call it from the event loop thread that
        runs the server; it may be called before :meth:`serve`, too.

        .. code-block:: python

            server.set_faults(Faults(reset_after=0))  # reset every open connection

        Their ``udp`` impairments replace those of the datagram echo too (see
        :meth:`set_udp_faults`).

        :param faults: the new faults, or ``None`` for none
        """
        self._faults.set(faults)
        self._udp_faults.set(None if faults is None else faults.udp)

    def clear_faults(self) -> None:
        """Inject no more faults, on streams or datagrams (``set_faults(None)``)."""
        self.set_faults(None)

    def pause_accepting(self, seconds: float | None = None) -> None:
        """Accept no connection for ``seconds`` (``None``: until
        :meth:`resume_accepting`).

        The listening sockets stay open: clients that connect meanwhile wait in
        the listen queue, which holds about :attr:`~ServerConfig.backlog` of
        them; past that the kernel drops their connection attempts (on Linux:
        it ignores the SYN, and the client's connect times out unless the pause
        ends first). Open connections are not affected.
        """
        if seconds is not None:
            check_number("seconds", seconds, allow_zero=True)
        self._faults.gate.pause(seconds)

    def resume_accepting(self) -> None:
        """Accept again after :meth:`pause_accepting` (a ``pause_accepting``
        fault keeps the server paused until it is cleared)."""
        self._faults.gate.resume()

    # --- the open connections ----------------------------------------------------

    def connections(self) -> list[ConnectionInfo]:
        """The stream connections open now, oldest first (snapshots).

        .. code-block:: python

            for conn in server.connections():
                print(conn.id, conn.peer, conn.bytes_received)
        """
        return self._connections.infos()

    def close_connection(self, id: int) -> bool:
        """Close connection ``id`` (its client sees the end of the stream).

        The connection ends as it would at the end of a stop's grace: the echo
        stops where it is and the socket is closed (TLS with close_notify). Data
        the client sent that the server had not read yet makes the system reset
        the connection instead. ``False`` if no such connection is open.
        """
        return self._connections.end(id, "closed")

    def reset_connection(self, id: int) -> bool:
        """Reset connection ``id`` (TCP RST: its client sees a connection reset).

        A Unix socket has no reset: its client sees the end of the stream.
        ``False`` if no such connection is open.
        """
        return self._connections.end(id, "aborted")

    def close_connections(self) -> int:
        """Close every open connection, as :meth:`close_connection`; how many."""
        return self._connections.end_all("closed")

    def reset_connections(self) -> int:
        """Reset every open connection, as :meth:`reset_connection`; how many."""
        return self._connections.end_all("aborted")

    # --- recordings ---------------------------------------------------------------

    def _recorder(self) -> Recorder:
        recorder = self._connections.recorder
        if recorder is None:
            raise RuntimeError(
                "this server keeps no recordings: start it with record=True"
            )
        return recorder

    @property
    def recordings(self) -> list[Recording]:
        """What each stream connection's client sent, oldest connection first.

        Needs ``record=True`` (:func:`anyecho.testing.serving` sets it). At most
        ``record_max_connections`` are kept (the oldest are dropped), each with
        at most ``record_max_bytes`` bytes.

        :raises RuntimeError: when the server keeps no recordings
        """
        return self._recorder().recordings

    def recording(self, id: int) -> Recording:
        """The recording of connection ``id``.

        :raises LookupError: when there is none (never opened, or dropped)
        """
        found = self._recorder().find(id)
        if found is None:
            raise LookupError(f"no recording of connection {id}")
        return found

    async def wait_connections(self, count: int) -> list[Recording]:
        """Wait until ``count`` connections have been recorded in all; return the
        recordings kept. Bound the wait yourself (``anyio.fail_after``)."""
        recorder = self._recorder()
        await recorder.wait(lambda: recorder.seen >= count)
        return recorder.recordings

    async def wait_received(self, nbytes: int) -> int:
        """Wait until ``nbytes`` bytes have arrived, over every recorded
        connection together; return the count."""
        recorder = self._recorder()
        await recorder.wait(lambda: recorder.bytes_received >= nbytes)
        return recorder.bytes_received

    async def expect_bytes(
        self,
        expected: bytes,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - the expectation's own bound
        connection: int | None = None,
    ) -> Recording:
        """Assert that a client sends ``expected`` next; return its recording.

        :param connection: the connection's id; by default the latest one (a
            test's only client, usually), waiting for one to open
        :raises AssertionError: when other bytes come, or too few in time; see
            :meth:`Recording.expect_bytes`

        .. code-block:: python

            await client.login("alice")
            await server.expect_bytes(b"LOGIN alice\\r\\n")
        """
        recorder = self._recorder()
        if connection is not None:
            recording = self.recording(connection)
        else:
            with anyio.move_on_after(timeout):
                await recorder.wait(lambda: recorder.seen > 0)
            if not recorder.seen:
                raise AssertionError(
                    f"expected {expected!r}, but no client connected within "
                    f"{timeout:g}s"
                )
            recording = recorder.recordings[-1]
        await recording.expect_bytes(expected, timeout=timeout)
        return recording

    def stop(self, grace: float | None = None) -> None:
        """Ask the server to stop; :meth:`serve` returns once it has.

        It is no longer :attr:`ready` from then on. It stops accepting and
        closes its listeners at once, or after the config's ``drain_delay``;
        open connections may then finish for up to ``grace`` seconds (default:
        the config's ``drain_timeout``) and are then closed. Calling it again
        skips what is left of the delay, and with a shorter grace shortens the
        wait; ``stop(0)`` closes every connection now. Safe to call before the
        server is ready (it then stops as soon as it starts) and more than once.
        Call it from the event loop thread that runs the server.
        """
        if grace is None:
            grace = self.config.drain_timeout
        if grace < 0:
            raise ValueError(f"grace must be >= 0, not {grace}")
        first = self._stop_requested is None
        if not first:  # a later stop may shorten the grace, never lengthen it
            grace = min(grace, cast(float, self._stop_requested))
        self._stop_requested = grace
        if self._stats.state in ("starting", "serving"):
            self._stats.set_state("draining")
        scope = self._accept_scope
        if scope is not None:
            delay = self.config.drain_delay
            if first and delay > 0:
                logger.info(
                    "not ready; accepting for %gs more, until load balancers "
                    "have seen it",
                    delay,
                )
                scope.deadline = min(scope.deadline, anyio.current_time() + delay)
            else:
                scope.cancel()
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
            try:
                await self._serve(task_status)
            finally:
                self._stats.set_state("stopped")

    async def _serve(self, task_status: TaskStatus[list[ListenAddress]]) -> None:
        config = self.config
        with ExitStack() as sockets:
            try:
                check_event_loop()
                keep_freed_memory()
                streams, datagrams = await self._open(sockets)
            except BaseException as exc:
                self._start_error = exc
                self._listening_event().set()
                raise
            self.addresses = [address for _, address in streams + datagrams]
            self._faults.prompt_moves = current_backend_name() != "trio"
            faults = self._faults.faults
            if faults is not None:
                logger.info("injecting faults: %s", faults.describe())
            logger.info(
                "serving echo on %s (backend %s)",
                ", ".join(map(str, self.addresses)),
                current_backend_name(),
            )
            async with create_task_group() as services:
                services.start_soon(self._faults.run)
                if config.idle_timeout is not None:
                    services.start_soon(
                        self._connections.watch_idle, config.idle_timeout
                    )
                async with create_task_group() as connections:
                    self._connections_scope = connections.cancel_scope
                    serve_connection = self._connections.serve
                    new_id = self._connections.new_id

                    def start(
                        client: socket.socket, peer: Any, source: str | None
                    ) -> None:
                        # The id is taken now, in the order of accepting: tasks
                        # may start in any order (Trio shuffles them).
                        connections.start_soon(
                            serve_connection, client, peer, source, new_id()
                        )

                    self._admission.start = start
                    await self._accepting(streams, datagrams, start, task_status)
                    # Stopping: no new connections, and none of those waiting at
                    # the per-source limit; the listeners close now.
                    self._admission.close_waiters()
                    sockets.close()
                    self._drain(connections)
                    self._draining_event().set()
                self._connections_scope = None
                services.cancel_scope.cancel()
        self._admission.flush_logs()
        self._connections.flush_logs()
        logger.info("server stopped: %s", self.stats.summary())

    async def _accepting(
        self,
        streams: list[tuple[socket.socket, ListenAddress]],
        datagrams: list[tuple[socket.socket, ListenAddress]],
        start: Start,
        task_status: TaskStatus[list[ListenAddress]],
    ) -> None:
        """Accept (and answer datagrams) until a stop."""
        config = self.config
        with CancelScope() as self._accept_scope:
            if self._stop_requested is not None:
                self._accept_scope.cancel()
            if self._stop_requested is None:
                self._stats.set_state("serving")
            task_status.started(list(self.addresses))
            self._listening_event().set()
            async with create_task_group() as acceptors:
                for sock, address in streams:
                    acceptors.start_soon(
                        functools.partial(accept_loop, gate=self._faults.gate),
                        sock,
                        address,
                        self._admission,
                        start,
                        self._stats,
                    )
                for sock, _ in datagrams:
                    guard = UDPGuard(
                        blocked_ports=config.udp_blocked_ports,
                        packets=config.udp_rate,
                        data=config.udp_byte_rate,
                    )
                    acceptors.start_soon(
                        serve_udp,
                        sock,
                        guard,
                        self._stats,
                        self._udp_faults,
                        self._connections.proxied,
                    )

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

    async def _open(
        self, stack: ExitStack
    ) -> tuple[
        list[tuple[socket.socket, ListenAddress]],
        list[tuple[socket.socket, ListenAddress]],
    ]:
        """Bind every socket the config asks for; they close when ``stack`` does.

        Given sockets (``fds``), it serves those and binds none.
        """
        config = self.config
        streams: list[tuple[socket.socket, ListenAddress]] = []
        datagrams: list[tuple[socket.socket, ListenAddress]] = []
        if config.fds:
            tls = config.ssl_context is not None
            for fd in config.fds:
                sock, address = _sockets.inherit(fd, tls=tls)
                stack.callback(_sockets.close, sock)
                kind = datagrams if address.transport == "udp" else streams
                kind.append((sock, address))
            return streams, datagrams
        port = config.port
        if port is not None:
            transport: Transport = "tls" if config.ssl_context else "tcp"
            targets = await _sockets.resolve(config.hosts, port, socket.SOCK_STREAM)
            for sock in _sockets.bind_inet(
                targets,
                socket.SOCK_STREAM,
                port,
                backlog=config.backlog,
                reuse_port=config.reuse_port,
            ):
                stack.callback(_sockets.close, sock)
                address = ListenAddress.of_socket(sock, transport)
                streams.append((sock, address))
                port = address.port
        for path in config.unix:
            sock, inode = _sockets.bind_unix(path, config.unix_mode, config.backlog)
            stack.callback(_sockets.remove_unix, path, inode)
            stack.callback(_sockets.close, sock)
            streams.append((sock, ListenAddress("unix", path=path)))
        if config.udp:
            if port is None:
                raise ValueError("UDP echo needs a port (it shares the TCP one)")
            targets = await _sockets.resolve(config.hosts, port, socket.SOCK_DGRAM)
            for sock in _sockets.bind_inet(
                targets,
                socket.SOCK_DGRAM,
                port,
                backlog=None,
                reuse_port=config.reuse_port,
            ):
                stack.callback(_sockets.close, sock)
                datagrams.append((sock, ListenAddress.of_socket(sock, "udp")))
        return streams, datagrams


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


async def serve(
    config: ServerConfig | None = None,
    /,
    *,
    task_status: TaskStatus[list[ListenAddress]] = TASK_STATUS_IGNORED,
    **options: Unpack[ServerOptions],
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
