"""Faults a running server applies, and changes while it runs.

:class:`FaultControl` holds a server's current :class:`~anyecho.faults.Faults`;
each connection has a :class:`ConnectionFaults`, which draws (by ``fraction``)
whether the faults apply to it, and again each time they change. A connection
that never had faults is served as it always is, at no cost: the server wraps a
connection's stream in :class:`LiveStream` only once faults that shape the
traffic were set, and moves a connection opened before that onto it when they
reach it (between two chunks, so that no byte is lost). Cut-offs and time
triggers act on the connection itself, through its cancel scope, so they reach
an idle connection at once.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import random
import select
import socket
import struct
from collections.abc import Callable
from typing import Protocol

import anyio
from anyio import CancelScope
from anyio.abc import ByteStream

from .._stats import ServerStats
from .._wrap import StreamWrapper
from ._spec import Faults
from ._streams import CutoffMode, _Cutoff

__all__ = ["AcceptGate", "ConnectionFaults", "FaultControl", "LiveStream", "hold"]

logger = logging.getLogger("anyecho.faults")

#: How often a connection in the middle of a send is checked again for a move
#: onto :class:`LiveStream`, and a blackholed connection with unread data for
#: its peer's going away (seconds).
RECHECK = 0.05

_LINGER_RESET = struct.pack("ii", 1, 0)


class _Counts(Protocol):
    received: int
    sent: int


class AcceptGate:
    """Whether the accept loops accept: paused by the faults, or for a while.

    The accept loop reads :attr:`paused` (one attribute) before each accept and
    waits in :meth:`wait_open` while it is true.
    """

    def __init__(self) -> None:
        self.paused = False
        self._by_faults = False
        #: paused by :meth:`pause` until this loop time (``inf``: until resumed)
        self._until: float | None = None
        self._changed: anyio.Event | None = None
        self._stats: ServerStats | None = None

    def _update(self) -> None:
        paused = self._by_faults or self._until is not None
        if paused and not self.paused and self._stats is not None:
            self._stats.fault("pause_accepting")
        self.paused = paused
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    def set_by_faults(self, paused: bool) -> None:
        self._by_faults = paused
        self._update()

    def pause(self, seconds: float | None) -> None:
        """Accept nothing for ``seconds`` (``None``: until :meth:`resume`)."""
        if seconds is None:
            self._until = math.inf
        else:
            self._until = anyio.current_time() + seconds
        self._update()

    def resume(self) -> None:
        self._until = None
        self._update()

    async def wait_open(self) -> None:
        """Return once accepting is no longer paused."""
        while self.paused:
            if self._changed is None:
                self._changed = anyio.Event()
            event = self._changed
            until = math.inf if self._by_faults or self._until is None else self._until
            with CancelScope(deadline=until):
                await event.wait()
            if (
                self._until is not None
                and self._until != math.inf
                and anyio.current_time() >= self._until
            ):
                self._until = None
                self._update()


class FaultControl:
    """A server's faults now, and the connections they may reach.

    :param stats: where the injected faults are counted
    :param faults: the faults to start with
    """

    def __init__(self, stats: ServerStats, faults: Faults | None = None) -> None:
        self._stats = stats
        self.gate = AcceptGate()
        self.gate._stats = stats
        self.faults: Faults | None = None
        #: the server wraps new connections in :class:`LiveStream`: faults that
        #: shape the traffic have been set
        self.engaged = False
        self._chooser = random.Random()  # noqa: S311
        #: the open connections, in the order they opened
        self._open: dict[ConnectionFaults, None] = {}
        self._timers: list[tuple[float, int, ConnectionFaults, int, str]] = []
        self._sequence = itertools.count()
        self._generation = 0
        self._wake: anyio.Event | None = None
        self.set(faults)

    def set(self, faults: Faults | None) -> None:
        """Replace the faults; they reach the open connections as
        :meth:`anyecho.EchoServer.set_faults` says."""
        if faults is not None and not isinstance(faults, Faults):
            raise TypeError(f"expected Faults or None, not {type(faults).__name__}")
        self.faults = faults
        self._generation += 1
        self._chooser = random.Random(None if faults is None else faults.seed)  # noqa: S311
        self.gate.set_by_faults(faults is not None and faults.pause_accepting)
        if faults is not None and faults.shapes_streams:
            self.engaged = True
        for connection in list(self._open):
            connection.changed()
        if self._generation == 1:
            return  # the server logs the faults it starts with
        if faults is not None:
            logger.info("faults now: %s", faults.describe())
        else:
            logger.info("faults cleared")

    def join(self, counts: _Counts) -> ConnectionFaults:
        """A new connection's faults (drawn now); :meth:`leave` when it ends."""
        connection = ConnectionFaults(self, counts)
        self._open[connection] = None
        return connection

    def leave(self, connection: ConnectionFaults) -> None:
        self._open.pop(connection, None)
        connection.closed = True

    def _draw(self) -> tuple[bool, random.Random]:
        """Whether the next connection gets the faults, and its own generator."""
        faults = self.faults
        chooser = self._chooser
        rng = random.Random(chooser.getrandbits(64))  # noqa: S311
        assert faults is not None
        chosen = faults.fraction >= 1 or chooser.random() < faults.fraction
        return chosen, rng

    def count(self, kind: str) -> None:
        self._stats.fault(kind)

    # --- timers: time cut-offs, and retries of a move onto LiveStream ---------

    def schedule(
        self, connection: ConnectionFaults, deadline: float, action: str
    ) -> None:
        timers = self._timers
        if len(timers) > 2 * len(self._open) + 64:
            # Drop the timers of closed connections and of faults since
            # replaced, so that they cannot pile up until their deadlines.
            timers[:] = [
                timer
                for timer in timers
                if not timer[2].closed and timer[2].generation == timer[3]
            ]
            heapq.heapify(timers)
        entry = (deadline, next(self._sequence), connection, connection.generation)
        heapq.heappush(timers, (*entry, action))
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    async def run(self) -> None:
        """Fire the timers, until cancelled (one task per server)."""
        timers = self._timers
        while True:
            now = anyio.current_time()
            while timers and timers[0][0] <= now:
                _, _, connection, generation, action = heapq.heappop(timers)
                if connection.closed or connection.generation != generation:
                    continue
                if action == "move":
                    connection.move()
                else:
                    connection.cut_now(action)  # type: ignore[arg-type]
            self._wake = wake = anyio.Event()
            with CancelScope(deadline=timers[0][0] if timers else math.inf):
                await wake.wait()


class ConnectionFaults:
    """The faults on one connection, and its part in applying them.

    The server sets :attr:`scope` to the connection's cancel scope, and
    :attr:`echoing` while the echo runs without :class:`LiveStream`.
    """

    __slots__ = (
        "_control",
        "_counts",
        "_rng",
        "chain",
        "closed",
        "cut",
        "echoing",
        "faults",
        "first_byte",
        "generation",
        "interrupted",
        "live",
        "scope",
        "settled",
    )

    def __init__(self, control: FaultControl, counts: _Counts) -> None:
        self._control = control
        self._counts = counts
        #: draws this connection's random delays (made once faults apply)
        self._rng: random.Random | None = None
        #: the connection's cancel scope, set by the server
        self.scope: CancelScope | None = None
        #: the plain echo runs (no LiveStream): a move cancels it at a receive
        self.echoing = False
        #: whether cancelling the plain echo now loses no byte (set by the
        #: server, which knows its streams); default: every byte was echoed
        self.settled: Callable[[], bool] = self._echoed
        #: the echo runs on a LiveStream
        self.live = False
        #: the echo was cancelled for a cut or a move onto LiveStream
        self.interrupted = False
        #: how the connection is being cut short, once it is
        self.cut: CutoffMode | None = None
        self.closed = False
        #: the time cut-off to start at the first byte: (mode, seconds)
        self.first_byte: tuple[CutoffMode, float] | None = None
        self.chain: ByteStream | None = None
        self.faults: Faults | None = None
        self.generation = 0
        self._refresh()

    def _refresh(self) -> None:
        """Draw whether the current faults apply here; start their clocks now."""
        control = self._control
        self.generation = control._generation
        self.chain = None
        self.first_byte = None
        self.faults = None
        faults = control.faults
        if faults is None or not faults.active or self.cut is not None:
            return
        chosen, self._rng = control._draw()
        if not chosen:
            return
        self.faults = faults
        cutoff = faults.cutoff_seconds
        if cutoff is not None:
            if faults.after_first_byte:
                self.first_byte = cutoff
            else:
                control.schedule(self, anyio.current_time() + cutoff[1], cutoff[0])

    def _echoed(self) -> bool:
        counts = self._counts
        return counts.received == counts.sent

    @property
    def needs_stream(self) -> bool:
        """Whether these faults need the connection's stream wrapped."""
        faults = self.faults
        if faults is None:
            return False
        return (
            bool(faults.kinds())
            or faults.slow_close is not None
            or faults.cutoff_bytes is not None
            or (faults.cutoff_seconds is not None and faults.after_first_byte)
        )

    @property
    def turned_away(self) -> bool:
        """``refuse`` or ``blackhole``: the connection is never served."""
        faults = self.faults
        return faults is not None and (faults.refuse or faults.blackhole)

    def changed(self) -> None:
        """The server's faults changed: apply the new ones to this open connection."""
        self._refresh()
        faults = self.faults
        if faults is None or self.cut is not None:
            return
        cutoff = faults.cutoff_seconds
        if cutoff is not None and cutoff[1] == 0 and not faults.after_first_byte:
            self.cut_now(cutoff[0])
            return
        cutoff_bytes = faults.cutoff_bytes
        if cutoff_bytes is not None and cutoff_bytes[1] == 0:
            self.cut_now(cutoff_bytes[0])
            return
        if not self.live and self.needs_stream:
            self.move()

    def move(self) -> None:
        """Move the plain echo onto :class:`LiveStream`, between two chunks.

        The echo waits in a receive when every byte received has been sent back:
        cancelling it there loses nothing. In the middle of a send, it is tried
        again a moment later.
        """
        if self.live or self.closed or self.cut is not None or not self.needs_stream:
            return
        if not self.echoing:
            return  # not started yet: it starts on a LiveStream
        if self.settled() and self.scope is not None:
            self.interrupted = True
            self.echoing = False
            self.scope.cancel()
        else:
            deadline = anyio.current_time() + RECHECK
            self._control.schedule(self, deadline, "move")

    def cut_now(self, mode: CutoffMode) -> None:
        """Cut the connection short now: close, reset or stall it."""
        if self.cut is not None or self.closed:
            return
        self.on_cut(mode)
        logger.debug("fault: %s now", mode)
        # On a LiveStream the echo's own scope is cancelled, and the cut made
        # there; the plain echo is cancelled and the connection goes on to make
        # it. Before the echo starts, it is made where the echo would start.
        if self.live or self.echoing:
            self.interrupted = not self.live
            self.echoing = False
            if self.scope is not None:
                self.scope.cancel()

    def on_cut(self, mode: CutoffMode) -> None:
        """Count a cut (made here, or by the byte cut-off of the stream)."""
        if self.cut is not None:
            return
        self.cut = mode
        self._control.count(mode)

    def stream(self, stream: ByteStream) -> LiveStream:
        """The stream to echo on: ``stream`` with the faults of the moment."""
        self.live = True
        return LiveStream(stream, self)

    def build(self, stream: ByteStream) -> ByteStream:
        """The chain of fault wrappers over ``stream`` for the current faults."""
        faults = self.faults
        if faults is None or self.cut is not None:
            chain = stream
        else:
            chain = faults.apply(stream, self._rng, on_cut=self.on_cut)
            for kind in faults.kinds():
                self._control.count(kind)
        self.chain = chain
        return chain

    def first_byte_arrived(self) -> None:
        cutoff = self.first_byte
        self.first_byte = None
        if cutoff is not None:
            if cutoff[1] == 0:
                self.cut_now(cutoff[0])
            else:
                deadline = anyio.current_time() + cutoff[1]
                self._control.schedule(self, deadline, cutoff[0])

    async def finish_cut(self, stream: ByteStream) -> None:
        """Carry out the cut on ``stream`` (the connection's, beneath the faults)."""
        assert self.cut is not None
        cutoff = _Cutoff(stream, 0, self.cut)
        with contextlib.suppress(anyio.EndOfStream):
            await cutoff.receive()


class LiveStream(StreamWrapper):
    """A connection's stream under the server's faults of the moment.

    Each receive and send goes through the fault wrappers for the current faults,
    built anew (fresh counts and clocks) after the faults change; with no fault
    on the connection, it passes straight through.
    """

    def __init__(self, stream: ByteStream, faults: ConnectionFaults) -> None:
        super().__init__(stream)
        self._faults = faults

    async def receive(self, max_bytes: int = 65536) -> bytes:
        faults = self._faults
        chain = faults.chain or faults.build(self.stream)
        data = await chain.receive(max_bytes)
        if faults.first_byte is not None:
            faults.first_byte_arrived()
        return data

    async def send(self, item: bytes) -> None:
        faults = self._faults
        chain = faults.chain or faults.build(self.stream)
        await chain.send(item)

    async def send_eof(self) -> None:
        faults = self._faults
        chain = faults.chain or faults.build(self.stream)
        if faults.faults is not None and faults.faults.slow_close is not None:
            self._faults._control.count("slow_close")
        await chain.send_eof()


async def hold(sock: socket.socket) -> None:
    """Keep ``sock`` open, reading nothing, until its peer goes away (a blackhole)."""
    poller = select.poll()
    hangup = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)
    poller.register(sock.fileno(), hangup)
    while True:
        await anyio.wait_readable(sock)
        if poller.poll(0):
            return
        # Readable with data the peer sent: it is still there; look again later.
        await anyio.sleep(RECHECK)


def refuse(sock: socket.socket) -> None:
    """Reset ``sock`` at once (``SO_LINGER`` 0, then close)."""
    with contextlib.suppress(OSError):  # gone already
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()
