"""Client-side helpers shared by the test modules.

Servers come from :func:`anyecho.testing.serving` (or the pytest plugin's
fixtures); what is here is the other end: clients, fakes and the bounds they use.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream
from anyio.abc import ByteReceiveStream, ByteStream

from anyecho import ListenAddress, StreamWrapper

#: Upper bound for any single test's network exchange (seconds). Generous: it only
#: turns a hang into a failure, it never judges speed.
TIMEOUT = 60

#: Lower bounds on elapsed loop time allow for the clock's resolution: uvloop's
#: clock counts whole milliseconds, so 0.3 s can read as 0.299.
CLOCK_RESOLUTION = 0.002


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


# --- reading and writing --------------------------------------------------------


async def receive_all(stream: ByteReceiveStream) -> bytes:
    """Everything the peer sends until it ends its side."""
    received = bytearray()
    async for data in stream:
        received += data
    return bytes(received)


async def read_to_end(stream: ByteReceiveStream) -> bytes:
    """What arrives before the peer closes; a reset counts as the end too."""
    received = bytearray()
    try:
        async for data in stream:
            received += data
    except BrokenResourceError:
        pass
    return bytes(received)


async def receive_exactly(stream: ByteReceiveStream, size: int) -> bytes:
    """``size`` bytes, never asking the stream for more than are still due."""
    received = bytearray()
    while len(received) < size:
        received += await stream.receive(size - len(received))
    return bytes(received)


async def round_trip(stream: ByteStream, message: bytes = b"ping") -> None:
    """Send ``message`` and check that exactly it comes back."""
    await stream.send(message)
    assert await receive_exactly(stream, len(message)) == message


async def exchange(
    stream: ByteStream, payload: bytes | Sequence[bytes], chunk: int = 64 * 1024
) -> bytes:
    """Send ``payload`` and half-close while reading the echo, concurrently.

    ``payload`` goes out in ``chunk``-sized sends, or, given as a sequence of
    pieces, one send per piece. Concurrency matters: a client that sends
    everything before reading would deadlock against any echo server that keeps
    backpressure, once the payload exceeds the socket buffers.
    """
    if isinstance(payload, bytes):
        view = memoryview(payload)
        pieces: Sequence[bytes] = [
            bytes(view[start : start + chunk]) for start in range(0, len(view), chunk)
        ]
    else:
        pieces = payload
    result = b""

    async def read() -> None:
        nonlocal result
        result = await receive_all(stream)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        for piece in pieces:
            await stream.send(piece)
        await stream.send_eof()
    return result


async def connect(address: ListenAddress) -> ByteStream:
    """Open a client stream to a listening address."""
    if address.path is not None:
        return await anyio.connect_unix(address.path)
    assert address.host is not None
    return await anyio.connect_tcp(address.host, address.port)


# --- sockets ----------------------------------------------------------------------


def reset_on_close(sock: socket.socket) -> None:
    """Make closing ``sock`` send an RST instead of a FIN (``SO_LINGER`` 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")


# --- what the server does with its streams -------------------------------------------


class SendRecorder(StreamWrapper):
    """Wraps the server's stream and records the size of every send (server side)."""

    def __init__(self, stream: ByteStream) -> None:
        super().__init__(stream)
        self.sizes: list[int] = []

    async def send(self, item: bytes) -> None:
        self.sizes.append(len(item))
        await self.stream.send(item)


def recording(into: list[SendRecorder]) -> Callable[[ByteStream], ByteStream]:
    """A ``wrap_stream`` that appends a :class:`SendRecorder` per connection."""

    def wrap(stream: ByteStream) -> ByteStream:
        recorder = SendRecorder(stream)
        into.append(recorder)
        return recorder

    return wrap


# --- in memory ---------------------------------------------------------------------


class MemoryStream(ByteStream):
    """An in-memory byte stream that records what the code under test does with it.

    On its own, it receives ``chunks`` and then the end of the stream, and keeps
    whatever is sent to it. Made by :func:`memory_stream_pair`, it receives what
    its peer sends, and a send waits until the peer has taken the data: there is
    no buffer, so backpressure shows. Either way, a receive honours ``max_bytes``,
    and the stream records:

    * ``sent``: every send, as made;
    * ``asked``: the ``max_bytes`` of every receive;
    * ``eof`` and ``closed``: whether it was half-closed, and whether closed;
    * ``unread``: what came in and was never received.
    """

    def __init__(self, chunks: Iterable[bytes] = ()) -> None:
        self.sent: list[bytes] = []
        self.asked: list[int] = []
        self.eof = False
        self.closed = False
        self._incoming: deque[bytes] = deque(chunks)
        self._pending = b""  # the rest of a chunk received in part
        self._taken = 0  # chunks received from _incoming so far
        self._ended = True  # nothing comes after _incoming
        self._peer: MemoryStream | None = None
        self._changed: anyio.Event | None = None

    @property
    def unread(self) -> list[bytes]:
        return ([self._pending] if self._pending else []) + list(self._incoming)

    async def _wait(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _end(self) -> None:
        if self._peer is not None:
            self._peer._ended = True
            self._peer._notify()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        self.asked.append(max_bytes)
        await anyio.lowlevel.checkpoint()
        while not self._pending:
            if self.closed:
                raise ClosedResourceError
            if self._incoming:
                self._pending = self._incoming.popleft()
                self._taken += 1
                self._notify()
            elif self._ended:
                raise EndOfStream
            else:
                await self._wait()
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        if self.eof or self.closed:
            raise ClosedResourceError
        self.sent.append(bytes(item))
        peer = self._peer
        if peer is None:
            return
        peer._incoming.append(bytes(item))
        taken = peer._taken + len(peer._incoming)  # once the peer has taken it
        peer._notify()
        try:
            while peer._taken < taken:
                if peer.closed:
                    raise BrokenResourceError
                await peer._wait()
        except BaseException:
            if peer._taken < taken:  # cancelled (or refused): take it back
                peer._incoming.pop()
            raise

    async def send_eof(self) -> None:
        self.eof = True
        self._end()

    async def aclose(self) -> None:
        self.closed = True
        self._notify()
        self._end()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


@asynccontextmanager
async def memory_stream_pair() -> AsyncIterator[tuple[MemoryStream, MemoryStream]]:
    """Two connected :class:`MemoryStream` ends (client, server), closed on exit."""
    client, server = MemoryStream(), MemoryStream()
    client._peer, server._peer = server, client
    client._ended = server._ended = False
    async with client, server:
        yield client, server


# --- the environment ----------------------------------------------------------------


def require_module(module: str, backend: str) -> None:
    """Skip without ``module``; under ``CI=true``, fail: CI must not run less."""
    if importlib.util.find_spec(module) is None:
        message = f"backend {backend!r} needs {module!r}, which is not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# --- PROXY protocol headers, as a load balancer sends them ----------------------------

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(
    source: tuple[str, int] | None, destination: tuple[str, int] = ("127.0.0.1", 7)
) -> bytes:
    """A v1 header: ``TCP4``/``TCP6`` from ``source``, or ``UNKNOWN`` for ``None``."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP6" if ":" in source[0] else "TCP4"
    line = f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}"
    return line.encode() + b"\r\n"


def proxy_v2(
    source: tuple[str, int] | str | None,
    destination: tuple[str, int] | str = ("127.0.0.1", 7),
    *,
    local: bool = False,
    tlvs: bytes = b"",
    datagram: bool = False,
) -> bytes:
    """A v2 header: ``PROXY`` from ``source`` (IPv4, IPv6, a Unix path, or
    ``None`` for ``UNSPEC``), or ``LOCAL``; ``tlvs`` are appended as they are."""
    import ipaddress

    command = 0x20 if local else 0x21
    kind = 0x02 if datagram else 0x01
    if source is None:
        family, block = 0x00, b""
        kind = 0
    elif isinstance(source, str):
        assert isinstance(destination, str)
        family = 0x30
        block = source.encode().ljust(108, b"\0") + destination.encode().ljust(
            108, b"\0"
        )
    else:
        assert isinstance(destination, tuple)
        src = ipaddress.ip_address(source[0])
        dst = ipaddress.ip_address(destination[0])
        family = 0x10 if src.version == 4 else 0x20
        block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    body = block + tlvs
    return (
        PROXY_V2_SIGNATURE
        + bytes([command, family | kind])
        + struct.pack("!H", len(body))
        + body
    )


def tlv(kind: int, value: bytes) -> bytes:
    """One v2 TLV (type, length, value)."""
    return struct.pack("!BH", kind, len(value)) + value


# --- HTTP: the metrics and health endpoint ------------------------------------------


class HTTPReply:
    """A response as the peer sent it: status, headers (lower-case names), body."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    @property
    def text(self) -> str:
        return self.body.decode()


async def http_exchange(address: ListenAddress, request: bytes) -> HTTPReply:
    """Send ``request`` as it is, half-close, and read the reply to the end."""
    async with await connect(address) as stream:
        await stream.send(request)
        await stream.send_eof()
        return HTTPReply(await read_to_end(stream))


async def http_get(
    address: ListenAddress, path: str, method: str = "GET", *headers: str
) -> HTTPReply:
    """One HTTP/1.1 request with ``Connection: close``."""
    head = "".join(f"{header}\r\n" for header in headers)
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n"
    return await http_exchange(address, request.encode())


def http_get_now(url: str) -> tuple[int, str]:
    """``GET url`` with the standard library's client: status and body."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric_values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, parsed by ``prometheus_client``'s parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of an exposition (``KeyError`` if absent)."""
    return metric_values(text)[name, frozenset(labels.items())]


def wait_for_metrics(url: str, done: Callable[[str], bool]) -> str:
    """Scrape ``url`` until ``done(exposition)``, within :data:`TIMEOUT`.

    For servers in other processes (a supervisor's workers report every half
    second): between scrapes the loop pauses for a poll interval.
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        status, text = http_get_now(url)
        if status == 200 and done(text):
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"{url} never matched; last scrape: {status} {text}")
        time.sleep(0.05)
