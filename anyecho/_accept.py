"""The accept loop, its errno policy, and who may start: the connection limits."""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import anyio

from ._errors import describe
from ._logs import LogLimiter
from ._sockets import ListenAddress, reset_on_close
from ._stats import ServerStats
from .faults._live import AcceptGate

__all__ = [
    "ACCEPT_BACKOFF",
    "ACCEPT_BATCH",
    "CONNECTION_ERRNOS",
    "Admission",
    "accept_loop",
]

logger = logging.getLogger("anyecho")

#: accept() failures that belong to one pending connection that died before we got
#: to it (accept(2): "treat like EAGAIN by retrying"). Every other failure (out of
#: descriptors or memory: EMFILE, ENFILE, ENOBUFS, ENOMEM, as Trio's
#: ``serve_listeners`` pauses on) is logged, and the loop pauses before it retries.
CONNECTION_ERRNOS: Final = frozenset(
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

#: How the accept loop accepts (a seam for tests that fake accept errors).
_accept = socket.socket.accept

Start = Callable[[socket.socket, Any, "str | None"], None]


class _Parked:
    """A connection's task that waits at its source's limit (see ``claim``)."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False

    def wake(self, *, granted: bool) -> None:
        self.granted = granted
        self.event.set()


class Admission:
    """The connection limits: a global one, and one per source address.

    Each connection served holds a slot of the global limit until it ends.
    Under the per-source limit a connection starts at once; over it, it waits,
    accepted but not read (as a client waits in the listen queue at the global
    limit), until one of its source's connections ends, and then takes over
    that connection's slot. Waiters hold no slot, so a source never holds more
    than its limit of the global one; and as many may wait, from all sources
    together, as the per-source limit (past that a newcomer over its source's
    limit is reset), so waiting costs a bounded number of descriptors. A flood
    of connections that are already dead (reset, or closed without a byte,
    before the server got to them) delays the next client instead of turning it
    away, because dead waiters are pruned first.

    :param max_connections: the global limit, or ``None``
    :param per_source: the per-source limit, or ``None``
    :param stats: where refusals are counted
    """

    def __init__(
        self,
        max_connections: int | None,
        per_source: int | None,
        stats: ServerStats,
        *,
        deferred: bool = False,
    ) -> None:
        self.max_connections = max_connections
        self.per_source = per_source
        #: the source is known only once the connection has told it (a PROXY
        #: header): :meth:`admit` counts none, and the connection :meth:`claim`s
        self.deferred = deferred
        self._slots = (
            None if max_connections is None else anyio.Semaphore(max_connections)
        )
        self._stats = stats
        #: open connections per source address, and the ones waiting for a slot
        self._sources: dict[str, int] = stats.open_by_source
        self._waiting: dict[str, deque[tuple[socket.socket, Any] | _Parked]] = {}
        self._waiters = 0
        #: starts a connection's task (set by the server while it serves)
        self.start: Start | None = None
        self._log_refused = LogLimiter(
            logger, logging.WARNING, "connections refused at the per-source limit"
        )
        self._log_waits = LogLimiter(
            logger, logging.INFO, "waits at the per-source limit"
        )
        self._log_full = LogLimiter(
            logger, logging.WARNING, "waits at the connection limit"
        )

    def flush_logs(self) -> None:
        for log in (self._log_refused, self._log_waits, self._log_full):
            log.flush()

    async def acquire(self, address: ListenAddress) -> None:
        """Take a slot of the global limit, waiting (logged) while none is free."""
        slots = self._slots
        if slots is None:
            return
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            self._log_full(
                "%s: at the connection limit (%d); new clients wait",
                address,
                self.max_connections,
            )
            await slots.acquire()

    def release_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def admit(self, client: socket.socket, peer: Any) -> tuple[bool, str | None]:
        """Whether ``client`` starts now, and the source it counts under.

        It does not start now when it waits for a slot of its source, or was
        reset; the source is ``None`` where none is counted.
        """
        limit = self.per_source
        if limit is None or self.deferred or not isinstance(peer, tuple):
            # No limit, a Unix socket peer (this machine), or a source that
            # the connection will tell (claim).
            return True, None
        source = str(peer[0]).removeprefix("::ffff:")
        held = self._sources.get(source, 0)
        if held < limit:
            self._sources[source] = held + 1
            return True, source
        if self._waiters >= limit:
            self._prune()
        if self._waiters < limit:
            self._waiting.setdefault(source, deque()).append((client, peer))
            self._waiters += 1
            self.release_slot()  # a waiter holds none
            self._log_waits(
                "%s: at the per-source limit (%d connections); a client waits",
                source,
                limit,
            )
        else:
            self._refuse(client, source)
        return False, source

    def release(self, source: str | None) -> None:
        """A connection ended: its source's next waiter takes over its slot, if
        one waits; else the slot is freed."""
        if source is not None:
            waiting = self._waiting.get(source)
            if waiting and self.start is not None:
                waiter = waiting.popleft()
                self._waiters -= 1
                if not waiting:
                    del self._waiting[source]
                # The slot and count carry over.
                if isinstance(waiter, _Parked):
                    waiter.wake(granted=True)
                else:
                    self.start(*waiter, source)
                return
            held = self._sources[source] - 1
            if held:
                self._sources[source] = held
            else:
                del self._sources[source]
        self.release_slot()

    async def claim(self, source: str) -> bool:
        """Count a connection under ``source`` once it has said who it is for.

        A connection admitted with no source (:attr:`deferred`: behind a proxy,
        the real client is known from the PROXY header only) calls this with the
        client's address, holding its slot of the global limit. Under the
        per-source limit it is counted at once; over it, it waits as a newcomer
        at the limit does (holding no slot, within the same bound on waiters),
        until one of its source's connections ends and hands it that slot.

        :returns: ``True`` once counted: call :meth:`release` with ``source``
            when the connection ends. ``False`` when it must end now (no room to
            wait, or the server stops): it then holds nothing, not even its
            global slot. Cancelled, it holds nothing either.
        """
        limit = self.per_source
        if limit is None:
            self._sources[source] = self._sources.get(source, 0) + 1
            return True
        held = self._sources.get(source, 0)
        if held < limit:
            self._sources[source] = held + 1
            return True
        if self._waiters >= limit:
            self._prune()
        if self._waiters >= limit or self.start is None:
            self.release_slot()
            self._stats.error("source-limit")
            self._log_refused(
                "%s: over the per-source limit (%d connections) with no room to "
                "wait; reset",
                source,
                limit,
            )
            return False
        parked = _Parked()
        self._waiting.setdefault(source, deque()).append(parked)
        self._waiters += 1
        self.release_slot()  # a waiter holds none
        self._log_waits(
            "%s: at the per-source limit (%d connections); a client waits",
            source,
            limit,
        )
        try:
            await parked.event.wait()
        except BaseException:
            if parked.granted:
                self.release(source)
            else:
                self._unpark(source, parked)
            raise
        return parked.granted

    def _unpark(self, source: str, parked: _Parked) -> None:
        waiting = self._waiting.get(source)
        if waiting is not None and parked in waiting:
            waiting.remove(parked)
            self._waiters -= 1
            if not waiting:
                del self._waiting[source]

    def _prune(self) -> None:
        """Drop the waiters whose peer has gone already (one peek each).

        Gone: reset, or closed without sending a byte. A peer that sent bytes
        (and then perhaps half-closed) waits on for its echo.
        """
        for source in list(self._waiting):
            waiting = self._waiting[source]
            for _ in range(len(waiting)):
                waiter = waiting.popleft()
                if isinstance(waiter, _Parked):  # its task watches its peer
                    waiting.append(waiter)
                    continue
                client, peer = waiter
                try:
                    alive = client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    alive = b"?"
                except OSError:
                    alive = b""
                if alive:
                    waiting.append((client, peer))
                    continue
                client.close()
                self._waiters -= 1
                self._stats.turned_away("reset")
            if not waiting:
                del self._waiting[source]

    def _refuse(self, client: socket.socket, source: str) -> None:
        """Reset a connection past the per-source limit, when too many wait."""
        reset_on_close(client)
        client.close()
        self.release_slot()
        self._stats.turned_away("source-limit")
        self._log_refused(
            "%s: over the per-source limit (%d connections) with no room to wait; "
            "reset",
            source,
            self.per_source,
        )

    def close_waiters(self) -> None:
        """Start no more waiters, and close those that wait (a stop)."""
        self.start = None
        for waiting in self._waiting.values():
            for waiter in waiting:
                if isinstance(waiter, _Parked):
                    waiter.wake(granted=False)
                else:
                    waiter[0].close()
        self._waiting.clear()
        self._waiters = 0


async def accept_loop(
    sock: socket.socket,
    address: ListenAddress,
    admission: Admission,
    start: Start,
    stats: ServerStats,
    *,
    gate: AcceptGate | None = None,
) -> None:
    """Accept from ``sock`` until cancelled or closed; ``start`` each connection.

    Every connection pending when the socket is readable is accepted at once,
    up to :data:`ACCEPT_BATCH` before the loop lets other tasks run, as libuv
    and nginx do: a newcomer waits one trip round the event loop behind the
    busy connections, not one trip per client ahead of it. Nothing here can
    fail because of one client: the accepted socket goes straight to its own
    task, where everything else is done. While ``gate`` is paused (the
    ``pause_accepting`` fault), it accepts nothing and the listen queue fills.
    """
    batch = 0
    while True:
        if gate is not None and gate.paused:
            await gate.wait_open()
        await admission.acquire(address)
        try:
            client, peer = _accept(sock)
        except BlockingIOError:
            admission.release_slot()
            batch = 0
            try:
                await anyio.wait_readable(sock)
            except anyio.ClosedResourceError:
                return
            continue
        except OSError as exc:
            admission.release_slot()
            if sock.fileno() < 0:
                return  # closed
            await _accept_failed(exc, stats)
            continue
        now, source = admission.admit(client, peer)
        if not now:
            continue
        start(client, peer, source)
        batch += 1
        if batch >= ACCEPT_BATCH:
            batch = 0
            await anyio.lowlevel.checkpoint()


async def _accept_failed(exc: OSError, stats: ServerStats) -> None:
    stats.error("accept")
    if exc.errno in CONNECTION_ERRNOS:
        logger.debug("accept: a pending connection failed (%s)", describe(exc))
        return
    logger.warning(
        "accept failed (%s); pausing %d ms", describe(exc), ACCEPT_BACKOFF * 1000
    )
    await anyio.sleep(ACCEPT_BACKOFF)
