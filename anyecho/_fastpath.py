"""Streams for accepted sockets that serve the same AnyIO contract for less CPU.

The server accepts from its listening sockets itself and hands each accepted
socket to :func:`adopt`, which wraps it in the cheapest stream for the running
event loop. Every stream it returns honours the :class:`anyio.abc.SocketStream`
contract exactly, because ``echo`` and the fault wrappers only ever see AnyIO
streams.

On asyncio (the stock loop, uvloop, and any loop with ``connect_accepted_socket``)
that is :class:`AsyncioStream`; on Trio, :class:`~anyecho._triostream.TrioStream`.
Both also count the bytes the kernel has taken from their sends
(``bytes_written()``), which is how the idle watchdog tells a slow reader from
one that stopped reading.

What AnyIO's asyncio streams spend on a small echo that these do not:

* its TCP stream keeps the transport's reading paused between receives, so every
  receive that waits resumes reading and pauses it again: two ``epoll_ctl`` system
  calls per echo, plus the transport's bookkeeping;
* every ``send`` that does not wait checks for cancellation, writes, and then
  yields to the event loop inside a shielded :class:`~anyio.CancelScope`: about
  13 µs on uvloop, where a whole small echo takes about 30 with the fast path;
* its Unix stream registers and unregisters a reader or writer for every wait.

Set the environment variable ``ANYECHO_FASTPATH=0`` to turn this off and serve
AnyIO's own streams, for comparison or to rule the fast path out (the idle
watchdog then counts finished sends only). It is read once, when the module is
imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import types
from collections import deque
from typing import Any, Final, cast

from anyio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    EndOfStream,
)
from anyio._backends import _asyncio as _anyio_asyncio  # see _task_state
from anyio.abc import SocketStream, UNIXSocketStream

__all__ = [
    "ENABLED",
    "JOIN_LIMIT",
    "READ_HIGH_MAX",
    "READ_HIGH_MIN",
    "WRITE_HIGH",
    "AsyncioStream",
    "adopt",
]

#: Whether :func:`adopt` serves our own streams at all: false when the
#: environment variable ``ANYECHO_FASTPATH`` is ``0``, ``false``, ``no`` or ``off``
#: as the module is imported.
ENABLED: Final = os.environ.get("ANYECHO_FASTPATH", "1").strip().lower() not in {
    "0",
    "false",
    "no",
    "off",
}

#: Bounds of the read-ahead high-water mark, which is the size asked for by the
#: last receive that had to wait. Reading pauses once more than that is buffered
#: and not yet received, and resumes when a receive finds the buffer empty, so a
#: peer that sends no more than a receive's worth at a time never touches the
#: transport's reading state, and one connection buffers at most the mark plus
#: one transport read (256 KiB). The lower bound keeps tiny receives from
#: pausing reading all the time; the upper one bounds the memory of huge ones.
READ_HIGH_MIN: Final = 64 * 1024
READ_HIGH_MAX: Final = 4 * 1024 * 1024

#: The transport's write high-water mark: zero, as in AnyIO. A send that leaves
#: anything in the transport's buffer (because the kernel's socket buffer is full)
#: waits until the transport has handed all of it to the kernel, so a send that
#: returned is as safe as a system call that returned, and closing aborts the
#: connection at once (what a server's idle timeout and hard stop need) without
#: losing data that a send reported sent. A higher mark would not buy overlap:
#: the kernel's buffer (up to megabytes on loopback and LANs) already keeps the
#: connection busy while the handler comes back for more, and 256 KiB measured
#: no different from zero at 64 KiB and 1 MiB messages, beyond the noise.
WRITE_HIGH: Final = 0

#: Small chunks waiting together are handed out as one, up to this size (and the
#: size asked for), so that a pipelining peer costs one echo per batch rather than
#: one per write. Larger chunks are handed out as they are, without a copy.
JOIN_LIMIT: Final = 64 * 1024


class _StreamProtocol(asyncio.Protocol):
    """The transport's side of an :class:`AsyncioStream`: buffer, flags, wakers.

    Everything here runs in event loop callbacks and never blocks; the stream's
    coroutines wait on the futures it resolves.
    """

    __slots__ = (
        "buffered",
        "chunks",
        "eof",
        "exception",
        "lost",
        "offset",
        "read_high",
        "read_waiter",
        "reading_paused",
        "transport",
        "write_paused",
        "write_waiter",
    )

    def __init__(self) -> None:
        #: received data not yet handed out, oldest first, as the transport read
        #: it: handing out a whole chunk copies nothing
        self.chunks: deque[bytes] = deque()
        #: how much of ``chunks[0]`` was already handed out
        self.offset = 0
        #: bytes in ``chunks`` minus ``offset``
        self.buffered = 0
        self.read_high = READ_HIGH_MIN
        self.reading_paused = False
        self.eof = False
        self.lost = False
        self.exception: Exception | None = None
        self.write_paused = False
        self.read_waiter: asyncio.Future[None] | None = None
        self.write_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        if type(data) is not bytes:  # the proactor loop hands out bytearrays
            data = bytes(data)
        self.chunks.append(data)
        buffered = self.buffered = self.buffered + len(data)
        if buffered > self.read_high and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        waiter = self.read_waiter  # _wake_reader(), written out: once per read
        if waiter is not None:
            self.read_waiter = None
            if not waiter.done():  # else cancelled
                waiter.set_result(None)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return True  # keep the transport open: our side may still send

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.exception = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter = self.read_waiter
        if waiter is not None:
            self.read_waiter = None
            if not waiter.done():  # else cancelled
                waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self.write_waiter
        if waiter is not None:
            self.write_waiter = None
            if not waiter.done():
                waiter.set_result(None)


class AsyncioStream(SocketStream):
    """An AnyIO socket stream over an asyncio transport, with bounded read-ahead.

    Reading goes on while no more than a receive's worth waits to be received, so
    a receive usually finds its data already there and the transport's reading
    state is only touched when the handler falls behind. A send goes straight to
    ``transport.write``; it waits only if the kernel did not take all of it, until
    the transport has passed the rest on, exactly as AnyIO's own stream does.
    Both directions are bounded: a peer that sends without reading stalls
    against the kernel's buffers, as with any AnyIO stream.

    Every :meth:`receive` and :meth:`send` is a cancellation point, checked before
    the call has any effect, so a cancelled receive has taken nothing from the
    buffer and a cancelled send has written nothing (AnyIO's asyncio Unix stream
    checkpoints the same way). Every receive also yields to the event loop, and so
    does every send but one that directly follows a receive on this stream: see
    :meth:`send` for why that second yield adds nothing. As in AnyIO, a send
    cancelled while it waits for the transport to drain has written its data,
    which still goes out unless the stream is closed.
    """

    __slots__ = (
        "_asked",
        "_closed",
        "_loop",
        "_protocol",
        "_receiving",
        "_sending",
        "_task",
        "_task_state",
        "_transport",
        "_written",
        "_yielded",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: _StreamProtocol,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        # Kept rather than looked up: asyncio.get_running_loop() makes a getpid()
        # system call each time on Python 3.11 and older.
        self._loop = loop
        self._closed = False
        # The reader and writer guards: two tasks receiving (or sending) at once
        # is a BusyResourceError, as in AnyIO, and a flag is all that takes.
        self._receiving = False
        self._sending = False
        # Every byte handed to the transport; less what it still holds, that is
        # what the kernel has taken (see bytes_written).
        self._written = 0
        # Whether the last call on this stream was a receive, which yielded to
        # the event loop (see send).
        self._yielded = False
        # The max_bytes that read_high was last worked out for.
        self._asked = 0
        # The task that last sent, and AnyIO's state for it (see send).
        self._task: asyncio.Task[Any] | None = None
        self._task_state: Any = _NO_TASK_STATE

    @property
    def _raw_socket(self) -> socket.socket:
        # A TransportSocket on the stock loop, a pseudo-socket on uvloop: enough
        # for the socket attributes, and what AnyIO's own stream returns too.
        return cast(socket.socket, self._transport.get_extra_info("socket"))

    @property
    def read_limit(self) -> int:
        """The read-ahead high-water mark now (see :data:`READ_HIGH_MIN`)."""
        return self._protocol.read_high

    @property
    def read_buffered(self) -> int:
        """Bytes received from the peer and not yet handed to a :meth:`receive`."""
        return self._protocol.buffered

    @property
    def write_buffered(self) -> int:
        """Bytes sent that the transport has not yet passed to the kernel."""
        return self._transport.get_write_buffer_size()

    def bytes_written(self) -> int:
        """Bytes the kernel has taken from this stream's sends so far.

        It grows while a large send is still draining to a slow reader, so the
        idle watchdog sees progress that a count of finished sends would not.
        """
        try:
            return self._written - self._transport.get_write_buffer_size()
        except (AttributeError, RuntimeError):  # transport gone
            return self._written

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._receiving:
            raise BusyResourceError("reading from")
        self._receiving = True
        try:
            protocol = self._protocol
            if protocol.chunks or protocol.eof or protocol.lost or self._closed:
                # AnyIO's checkpoint on asyncio is exactly this; awaiting it
                # directly saves the backend lookup, a microsecond per call.
                await asyncio.sleep(0)
            else:
                # Wait for data, EOF or the connection's loss, reading first if
                # reading was paused (the buffer is empty). Cancellable, and a
                # cancelled wait has taken nothing from the buffer.
                if max_bytes != self._asked:
                    self._asked = max_bytes
                    protocol.read_high = min(
                        max(max_bytes, READ_HIGH_MIN), READ_HIGH_MAX
                    )
                if protocol.reading_paused:
                    protocol.reading_paused = False
                    self._transport.resume_reading()
                waiter = protocol.read_waiter = self._loop.create_future()
                await waiter
            self._yielded = True
            if self._closed:
                raise ClosedResourceError
            chunks = protocol.chunks
            if len(chunks) == 1 and not protocol.offset:
                # What _take() does with one whole chunk waiting, written out: the
                # usual case, with one message in flight.
                chunk = chunks[0]
                if len(chunk) <= max_bytes:
                    chunks.clear()
                    protocol.buffered = 0
                    return chunk
            return self._take(max_bytes)
        finally:
            self._receiving = False

    def _take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` from the buffer (EOF or the loss if it is empty)."""
        protocol = self._protocol
        chunks = protocol.chunks
        if not chunks:
            if protocol.exception is not None:
                raise BrokenResourceError from protocol.exception
            raise EndOfStream
        chunk = chunks[0]
        offset = protocol.offset
        size = len(chunk) - offset
        if size > max_bytes:
            # One copy of what is handed out; the rest stays where it is.
            size = max_bytes
            protocol.offset = offset + size
            chunk = chunk[offset : offset + size]
        else:
            chunks.popleft()
            protocol.offset = 0
            if offset:
                chunk = chunk[offset:]
            if chunks and size < JOIN_LIMIT:
                chunk = self._join(chunk, min(max_bytes, JOIN_LIMIT))
                size = len(chunk)
        protocol.buffered -= size
        return chunk

    def _join(self, first: bytes, limit: int) -> bytes:
        """``first`` and the whole chunks after it that fit in ``limit`` bytes."""
        chunks = self._protocol.chunks
        pieces = [first]
        size = len(first)
        while chunks and size + len(chunks[0]) <= limit:
            chunk = chunks.popleft()
            pieces.append(chunk)
            size += len(chunk)
        return b"".join(pieces) if len(pieces) > 1 else first

    async def send(self, item: bytes) -> None:
        if self._sending:
            raise BusyResourceError("writing to")
        self._sending = True
        try:
            protocol = self._protocol
            # The checkpoint comes first, so that a cancelled send has written
            # nothing and a send that returned has written everything. (AnyIO's
            # TCP stream checks for cancellation, writes, and then yields inside
            # a shielded cancel scope: the same guarantee for 13 µs, not 3.)
            #
            # A send straight after a receive checks for cancellation but does
            # not yield again. Why nothing is lost:
            # * Cancellation: the check is AnyIO's checkpoint_if_cancelled. A
            #   cancellation requested while the receive waited raised there; one
            #   requested since (by this task, or by another in the loop turn in
            #   which the receive's data arrived) has marked a scope as cancelled,
            #   and then this send yields, and AnyIO cancels it before it writes.
            # * Fairness: the receive yielded to the event loop (every receive
            #   does, even one whose data was waiting), so every receive-then-send
            #   turn still lets every other task and callback run once; a second
            #   yield would only run the loop again with nothing new to do for
            #   this connection. Every send clears the flag, so two sends in a
            #   row (from any tasks) still yield at least every other time.
            yielded = self._yielded
            self._yielded = False
            if protocol.write_paused and not protocol.lost:
                await self._drained()  # only after a cancelled send
            elif not yielded or _task_states is None:
                await asyncio.sleep(0)
            else:
                # AnyIO's checkpoint_if_cancelled, written out (a call costs a
                # tenth of a small echo's instructions here): yield if a cancel
                # scope inside the nearest shield was cancelled, and AnyIO then
                # cancels the task in that yield.
                task = asyncio.current_task(self._loop)  # no getpid() call
                state = self._task_state if task is self._task else self._watch(task)
                scope = state.cancel_scope
                while scope is not None:
                    if scope._cancel_called:
                        await asyncio.sleep(0)
                        break
                    scope = None if scope._shield else scope._parent_scope
            if self._closed:
                raise ClosedResourceError
            if protocol.exception is not None or self._transport.is_closing():
                raise BrokenResourceError from protocol.exception
            try:
                self._written += len(item)
                self._transport.write(item)
            except RuntimeError as exc:  # after write_eof(), or closed meanwhile
                if self._transport.is_closing():
                    raise BrokenResourceError from exc
                raise
            if protocol.write_paused:
                await self._written_out()
        finally:
            self._sending = False

    def _watch(self, task: asyncio.Task[Any] | None) -> Any:
        """Look up AnyIO's state for the task that sends from now on."""
        self._task = task
        state = self._task_state = _task_state(task)
        return state

    async def _written_out(self) -> None:
        """The kernel's buffer is full: wait until the transport has passed all
        of the send on, as AnyIO does."""
        await self._drained()
        if self._closed:
            raise ClosedResourceError
        if self._protocol.exception is not None:
            raise BrokenResourceError from self._protocol.exception

    async def _drained(self) -> None:
        """Wait until the transport resumes writing or the connection is lost."""
        protocol = self._protocol
        while protocol.write_paused and not protocol.lost and not self._closed:
            waiter = protocol.write_waiter = self._loop.create_future()
            await waiter

    async def send_eof(self) -> None:
        # As in AnyIO: the transport sends the EOF once it has sent what it
        # holds, and an error here shows up on the next receive instead.
        with contextlib.suppress(OSError):
            self._transport.write_eof()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # As in AnyIO: at once, without waiting for a slow peer. Sends have
            # handed everything to the kernel, which still delivers it.
            self._transport.abort()
            # Receives and sends waiting in other tasks raise ClosedResourceError.
            self._protocol._wake_reader()
            self._protocol._wake_writer()
        await asyncio.sleep(0)


#: AnyIO's state of each of its tasks on asyncio, where this AnyIO keeps it as
#: :func:`_task_state` expects; else ``None``, and every send yields.
_task_states: Final[Any] = (
    getattr(_anyio_asyncio, "_task_states", None)
    if all(
        hasattr(_anyio_asyncio.CancelScope, name)
        for name in ("_cancel_called", "_shield", "_parent_scope")
    )
    and hasattr(_anyio_asyncio, "TaskState")
    else None
)

#: The state of a task that AnyIO does not know: in no cancel scope.
_NO_TASK_STATE: Final[Any] = types.SimpleNamespace(cancel_scope=None)


def _task_state(task: asyncio.Task[Any] | None) -> Any:
    """AnyIO's state for ``task``: its innermost cancel scope, if any.

    :class:`AsyncioStream` looks a task's state up once, and then only walks its
    cancel scopes per send: the test that AnyIO's ``checkpoint_if_cancelled``
    makes. AnyIO's public ``current_effective_deadline() == -inf`` answers the
    same, for about 20 000 more instructions per call (it finds the backend
    through ``sniffio``, looks the task up in a weak dictionary and takes the
    minimum of every deadline on the way).
    """
    state = None if task is None else _task_states.get(task)
    return _NO_TASK_STATE if state is None else state


async def adopt(sock: socket.socket) -> SocketStream:
    """The AnyIO stream to serve an accepted socket with, on the running backend.

    :class:`AsyncioStream` on asyncio loops that can adopt accepted sockets,
    :class:`~anyecho._triostream.TrioStream` on Trio, and AnyIO's own stream
    otherwise (or with ``ANYECHO_FASTPATH=0``). The stream owns ``sock`` from the
    start: if making it fails, ``sock`` is closed. TCP sockets get
    ``TCP_NODELAY``, as AnyIO's listeners give them.
    """
    try:
        sock.setblocking(False)
        tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        if tcp:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ENABLED:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                from ._triostream import TrioStream

                return TrioStream(sock)
            if _can_adopt(type(loop)):
                transport, protocol = await loop.connect_accepted_socket(
                    _StreamProtocol, sock
                )
                return AsyncioStream(transport, protocol, loop)
        if tcp:
            return await SocketStream.from_socket(sock)
        return await UNIXSocketStream.from_socket(sock)
    except BaseException:
        sock.close()
        raise


_ADOPTING: Final = ("connect_accepted_socket", "add_reader")


_CAN_ADOPT: dict[type, bool] = {}


def _can_adopt(loop_type: type) -> bool:
    """Whether loops of this type implement what :class:`AsyncioStream` needs."""
    known = _CAN_ADOPT.get(loop_type)
    if known is None:
        known = _CAN_ADOPT[loop_type] = all(
            getattr(loop_type, name, None)
            not in (None, getattr(asyncio.AbstractEventLoop, name))
            for name in _ADOPTING
        )
    return known
