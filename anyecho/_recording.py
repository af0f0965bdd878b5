"""Recordings: what each connection's client sent, chunk by chunk, and how it ended.

A server with ``record=True`` keeps a :class:`Recording` per stream connection,
taken in the connection's receive path, beneath the faults and after TLS: the
bytes as the client sent them, with the time each chunk arrived. Memory is
bounded twice over: each recording keeps at most ``record_max_bytes`` bytes (it
is then :attr:`~Recording.truncated`; its byte count goes on), and the server
keeps the last ``record_max_connections`` recordings (older ones are dropped;
:attr:`Recorder.seen` goes on counting).

Waiting is done on events set as bytes arrive: no polling, no sleeps, and it
follows AnyIO's clock (a Trio ``MockClock`` included).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import ByteStream

from ._wrap import StreamWrapper

__all__ = ["EndReason", "Recorder", "Recording", "RecordingStream"]

#: How a connection ended:
#:
#: - ``eof``: the client ended its side, and got its echo;
#: - ``reset``: the connection was lost (the client reset it, or went away);
#: - ``error``: the server failed on it (a failed TLS handshake, a handler error);
#: - ``fault``: an injected fault ended it (a close, reset or stall cut-off);
#: - ``timeout``: it was idle for ``idle_timeout``;
#: - ``closed``: closed on request (:meth:`~anyecho.EchoServer.close_connection`);
#: - ``aborted``: reset on request (:meth:`~anyecho.EchoServer.reset_connection`);
#: - ``stop``: the server stopped, and the connection did not finish in time.
EndReason = Literal[
    "eof", "reset", "error", "fault", "timeout", "closed", "aborted", "stop"
]


class _Watcher(Protocol):
    """What a recording tells as bytes arrive and as it ends (its recorder)."""

    def received(self, size: int) -> None: ...

    def notify(self) -> None: ...


def _preview(data: bytes, limit: int = 200) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data)} bytes)"


class Recording:
    """What one connection's client sent: its bytes, in order, and their times.

    Made by the server; read it while the connection runs or after it ended.

    :param id: the connection's id (as in :meth:`anyecho.EchoServer.connections`)
    :param peer: the client's address, as the logs write it (``127.0.0.1:50312``)
    :param transport: ``tcp``, ``tls`` or ``unix``
    :param opened_at: when the connection opened, on AnyIO's clock
    :param max_bytes: the most bytes to keep (``record_max_bytes``)
    """

    def __init__(
        self,
        id: int,
        peer: str,
        transport: str,
        *,
        opened_at: float,
        max_bytes: int,
    ) -> None:
        self.id = id
        self.peer = peer
        self.transport = transport
        self.opened_at = opened_at
        #: each chunk received: (seconds since the connection opened, the bytes),
        #: in order, the times never decreasing
        self.chunks: list[tuple[float, bytes]] = []
        #: bytes received in all, kept or not
        self.bytes_received = 0
        #: whether bytes were left out, past ``record_max_bytes``
        self.truncated = False
        #: how the connection ended (:data:`EndReason`), ``None`` while it is open
        self.ended: EndReason | None = None
        self._room = max_bytes
        self._recorder: _Watcher | None = None  # set by the server's recorder
        self._changed: anyio.Event | None = None
        self._expected = 0  # where the next expect_bytes() starts

    def __repr__(self) -> str:
        state = self.ended or "open"
        return (
            f"<Recording #{self.id} from {self.peer}: {self.bytes_received} bytes "
            f"in {len(self.chunks)} chunks, {state}>"
        )

    @property
    def data(self) -> bytes:
        """The bytes kept, in order (all of them unless :attr:`truncated`)."""
        return b"".join(chunk for _, chunk in self.chunks)

    def received(self, when: float, data: bytes) -> None:
        """Record one chunk that arrived ``when`` seconds after the opening."""
        size = len(data)
        self.bytes_received += size
        room = self._room
        if room:
            piece = data if size <= room else data[:room]
            self.chunks.append((when, bytes(piece)))
            self._room = room - len(piece)
        if size > room:
            self.truncated = True
        if self._recorder is not None:
            self._recorder.received(size)
        self._notify()

    def end(self, reason: EndReason) -> None:
        """The connection is over (once; later calls change nothing)."""
        if self.ended is None:
            self.ended = reason
            self._notify()
            if self._recorder is not None:
                self._recorder.notify()

    def _notify(self) -> None:
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        while not done():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    async def wait_bytes(self, nbytes: int) -> int:
        """Wait until at least ``nbytes`` bytes have arrived; return the count.

        Bound it yourself (``anyio.fail_after``), or use :meth:`expect_bytes`.

        :raises EOFError: if the connection ends with fewer
        """
        await self._wait_until(
            lambda: self.bytes_received >= nbytes or self.ended is not None
        )
        if self.bytes_received < nbytes:
            raise EOFError(
                f"connection #{self.id} from {self.peer} ended ({self.ended}) "
                f"after {self.bytes_received} of {nbytes} bytes"
            )
        return self.bytes_received

    async def wait_ended(self) -> EndReason:
        """Wait until the connection is over; return how it ended."""
        await self._wait_until(lambda: self.ended is not None)
        assert self.ended is not None
        return self.ended

    async def expect_bytes(self, expected: bytes, *, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Assert that the client sends ``expected`` next, waiting for it to arrive.

        Successive calls read on: ``expect_bytes(b"HELLO ")`` then
        ``expect_bytes(b"WORLD")`` pass for a client that sent ``HELLO WORLD``,
        however the bytes were split. It waits (at most ``timeout`` seconds,
        on AnyIO's clock) until enough bytes arrived or the connection ended,
        then compares.

        :raises AssertionError: when other bytes came, too few came before the
            connection ended or the time ran out, or the recording stopped
            short (``record_max_bytes``); the message shows what arrived
        """
        start = self._expected
        end = start + len(expected)
        with anyio.move_on_after(timeout):
            await self._wait_until(
                lambda: self.bytes_received >= end or self.ended is not None
            )
        data = self.data
        got = data[start:end]
        if got == expected:
            self._expected = end
            return
        raise AssertionError(self._explain(expected, start, got, timeout))

    def _explain(self, expected: bytes, start: int, got: bytes, timeout: float) -> str:
        where = f"connection #{self.id} from {self.peer}"
        offset = f" at byte {start}" if start else ""
        lines = [f"expected {_preview(expected)}{offset} of {where}"]
        lines.append(f"received {_preview(got)}")
        if got and not expected.startswith(got):
            first = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(got, expected, strict=False))
                    if a != b
                ),
                min(len(got), len(expected)),
            )
            lines.append(
                f"first difference at byte {start + first}: "
                f"expected {expected[first : first + 1]!r}, "
                f"got {got[first : first + 1]!r}"
            )
        if len(self.data) < self.bytes_received and start + len(got) >= len(self.data):
            lines.append(
                f"the recording keeps only the first {len(self.data)} bytes "
                "(raise record_max_bytes)"
            )
        elif len(got) < len(expected):
            if self.ended is not None:
                lines.append(f"the connection ended ({self.ended})")
            else:
                lines.append(f"nothing more arrived within {timeout:g}s")
        lines.append(
            f"all received: {_preview(self.data)} in {len(self.chunks)} chunks"
        )
        return "\n".join(lines)


class RecordingStream(StreamWrapper):
    """The connection's stream, recording what it receives into a recording."""

    def __init__(self, stream: ByteStream, recording: Recording) -> None:
        super().__init__(stream)
        self.recording = recording
        self._receive = stream.receive
        self._opened_at = recording.opened_at

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._receive(max_bytes)
        self.recording.received(anyio.current_time() - self._opened_at, data)
        return data

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.stream.extra_attributes


class Recorder:
    """A server's recordings: the last ``max_connections`` of them, and waits.

    :param max_bytes: the bytes kept per connection (``None``: every byte)
    :param max_connections: the recordings kept (``None``: every one)
    """

    def __init__(self, max_bytes: int | None, max_connections: int | None) -> None:
        self.max_bytes = max_bytes
        self.max_connections = max_connections
        self._recordings: deque[Recording] = deque(maxlen=max_connections)
        #: connections recorded, kept or dropped since
        self.seen = 0
        #: bytes received on every connection recorded
        self.bytes_received = 0
        self._changed: anyio.Event | None = None

    @property
    def recordings(self) -> list[Recording]:
        """The recordings kept, by connection id (the order of accepting)."""
        return sorted(self._recordings, key=lambda recording: recording.id)

    @property
    def dropped(self) -> int:
        """Recordings dropped to keep at most ``max_connections``."""
        return self.seen - len(self._recordings)

    def open(self, id: int, peer: str, transport: str, opened_at: float) -> Recording:
        """Start the recording of a new connection."""
        room = sys.maxsize if self.max_bytes is None else self.max_bytes
        recording = Recording(id, peer, transport, opened_at=opened_at, max_bytes=room)
        recording._recorder = self
        self._recordings.append(recording)
        self.seen += 1
        self.notify()
        return recording

    def received(self, size: int) -> None:
        self.bytes_received += size
        self.notify()

    def notify(self) -> None:
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    async def wait(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` holds, checked whenever something is recorded."""
        while not done():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def find(self, id: int) -> Recording | None:
        """The kept recording of connection ``id``, if any."""
        for recording in self._recordings:
            if recording.id == id:
                return recording
        return None
