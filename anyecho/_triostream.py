"""The stream the server serves accepted sockets with on Trio.

It is AnyIO's own Trio socket stream, written out so that it can count the bytes
the kernel takes as a send proceeds (:meth:`TrioStream.bytes_written`): a 1 MiB
send to a reader that takes 64 KiB a second finishes only after 16 seconds, but
moves bytes all along, and the idle watchdog must see that. It drives the
stdlib socket itself, as ``trio.socket`` does, for a third fewer instructions
per small echo than AnyIO's stream over Trio's socket. Everything else is as in
AnyIO: every receive and send is a cancellation point, every send yields and
so does every receive but one straight after a send (see
:meth:`TrioStream.receive`), concurrent use raises
:exc:`~anyio.BusyResourceError`, an empty read is :exc:`~anyio.EndOfStream`, a
socket error is :exc:`~anyio.BrokenResourceError` and use after
:meth:`~TrioStream.aclose` is :exc:`~anyio.ClosedResourceError`.
"""

from __future__ import annotations

import socket
from typing import NoReturn

import trio
from anyio import (
    BrokenResourceError,
    BusyResourceError,
    ClosedResourceError,
    EndOfStream,
)
from anyio.abc import SocketStream
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    notify_closing,
    wait_readable,
    wait_writable,
)

__all__ = ["TrioStream"]


class TrioStream(SocketStream):
    """An AnyIO socket stream over an accepted, connected stdlib socket.

    It drives the socket as Trio's own socket methods do (try the system call,
    wait for readiness only if it would block), without their wrapper: every
    send is a checkpoint, and so is every receive, except that a receive
    straight after a send on this stream checks for cancellation without
    yielding a second time (see :meth:`receive`).

    :param sock: the socket; the stream owns it and closes it in :meth:`aclose`
    """

    __slots__ = ("_closed", "_raw", "_receiving", "_sending", "_written", "_yielded")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._raw = sock
        self._closed = False
        self._receiving = False
        self._sending = False
        self._written = 0
        # Whether the last call on this stream was a send, which yielded.
        self._yielded = False

    @property
    def _raw_socket(self) -> socket.socket:
        return self._raw

    def bytes_written(self) -> int:
        """Bytes the kernel has taken from this stream's sends so far."""
        return self._written

    def _convert(self, exc: BaseException) -> NoReturn:
        # As AnyIO's Trio stream converts them; anything else (a cancellation)
        # goes on as it is.
        if not isinstance(exc, OSError | trio.ClosedResourceError):
            raise exc
        if isinstance(exc, trio.ClosedResourceError):
            raise ClosedResourceError from exc
        if self._closed and self._raw.fileno() < 0:
            raise ClosedResourceError from None
        raise BrokenResourceError from exc

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._receiving:
            raise BusyResourceError("reading from")
        self._receiving = True
        # What trio.socket's recv() does: a cancellation point, the system call,
        # and then either a yield or a wait that is one. A receive straight after
        # a send keeps the cancellation point and skips the yield: the send has
        # just yielded, after writing, which is also what gives the peer time to
        # answer before this recv() (had the send skipped its yield instead, the
        # recv() would come straight after the write and find nothing: a failed
        # system call, an epoll registration and a wait, per echo). Why nothing
        # is lost:
        # * Cancellation: checkpoint_if_cancelled raises if any scope around
        #   the task was cancelled, whenever and by whom, before anything is read.
        # * Fairness: the send yielded (Trio's scheduler ran every other runnable
        #   task), so each send-then-receive turn still yields once; a second
        #   yield would only run the scheduler again with nothing new for this
        #   connection. Every receive clears the flag, so receives in a row yield.
        yielded = self._yielded
        self._yielded = False
        try:
            await checkpoint_if_cancelled()
            raw = self._raw
            try:
                data = raw.recv(max_bytes)
            except BlockingIOError:
                while True:
                    await wait_readable(raw)
                    try:
                        data = raw.recv(max_bytes)
                        break
                    except BlockingIOError:
                        pass
            else:
                if not yielded:
                    await cancel_shielded_checkpoint()
        except BaseException as exc:
            self._convert(exc)
        finally:
            self._receiving = False
        if not data:
            raise EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._sending:
            raise BusyResourceError("writing to")
        self._sending = True
        # Trio's socket send(): a cancellation point, the system call, and a
        # yield (or a wait for the socket to be writable, which is one).
        try:
            await checkpoint_if_cancelled()
            if self._closed:
                raise ClosedResourceError
            raw = self._raw
            view = memoryview(item)
            waited = False
            try:
                while view:
                    try:
                        sent = raw.send(view)
                    except BlockingIOError:
                        await wait_writable(raw)
                        waited = True
                        continue
                    self._written += sent
                    view = view[sent:]
                if not waited:
                    await cancel_shielded_checkpoint()
            except BaseException as exc:
                self._convert(exc)
            self._yielded = True
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        try:
            self._raw.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._convert(exc)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # Tasks waiting on the socket raise ClosedResourceError.
            notify_closing(self._raw)
            self._raw.close()
        await trio.lowlevel.checkpoint()
