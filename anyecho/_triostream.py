"""The stream the server serves accepted sockets with on Trio.

It is AnyIO's own Trio socket stream, written out so that it can count the bytes
the kernel takes as a send proceeds (:meth:`TrioStream.bytes_written`): a 1 MiB
send to a reader that takes 64 KiB a second finishes only after 16 seconds, but
moves bytes all along, and the idle watchdog must see that. Everything else is
as in AnyIO: every receive and send is a checkpoint (Trio's socket methods are),
concurrent use raises :exc:`~anyio.BusyResourceError`, an empty read is
:exc:`~anyio.EndOfStream`, a socket error is :exc:`~anyio.BrokenResourceError`
and use after :meth:`~TrioStream.aclose` is :exc:`~anyio.ClosedResourceError`.
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

__all__ = ["TrioStream"]


class TrioStream(SocketStream):
    """An AnyIO socket stream over an accepted, connected stdlib socket.

    :param sock: the socket; the stream owns it and closes it in :meth:`aclose`
    """

    __slots__ = ("_closed", "_raw", "_receiving", "_sending", "_sock", "_written")

    def __init__(self, sock: socket.socket) -> None:
        self._raw = sock
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._closed = False
        self._receiving = False
        self._sending = False
        self._written = 0

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
        if self._closed and self._sock.fileno() < 0:
            raise ClosedResourceError from None
        if isinstance(exc, OSError):
            raise BrokenResourceError from exc
        raise exc

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._receiving:
            raise BusyResourceError("reading from")
        self._receiving = True
        try:
            data = await self._sock.recv(max_bytes)
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
        try:
            view = memoryview(item)
            if not view:
                # Nothing to send is still a checkpoint, and still an error on
                # a closed stream.
                await trio.lowlevel.checkpoint()
                if self._closed:
                    raise ClosedResourceError
            send = self._sock.send
            while view:
                try:
                    sent = await send(view)
                except BaseException as exc:
                    self._convert(exc)
                self._written += sent
                view = view[sent:]
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._convert(exc)

    async def aclose(self) -> None:
        self._closed = True
        self._sock.close()
        await trio.lowlevel.checkpoint()
