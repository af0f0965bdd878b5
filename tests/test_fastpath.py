"""The streams the server serves accepted sockets with, against real sockets.

Every contract test runs on each backend, on the stream :func:`adopt` picks:
:class:`AsyncioStream` on asyncio and uvloop, :class:`TrioStream` on Trio. With
``ANYECHO_FASTPATH=0`` the same tests check AnyIO's own streams: the reference
both must behave like.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from anyio import (
    BrokenResourceError,
    BusyResourceError,
    CancelScope,
    ClosedResourceError,
    EndOfStream,
)
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream

from anyecho import _fastpath as fastpath
from anyecho import echo
from anyecho._connection import _Progress
from anyecho._fastpath import AsyncioStream, adopt
from anyecho._triostream import TrioStream
from anyecho.testing import serving

from .utils import (
    TIMEOUT,
    exchange,
    random_bytes,
    receive_all,
    receive_exactly,
    reset_on_close,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

pytestmark = pytest.mark.anyio

#: One read by an asyncio transport, at most: how far the read-ahead may overshoot.
TRANSPORT_READ = 256 * 1024


@pytest.fixture
async def inner() -> AsyncIterator[SocketListener]:
    """AnyIO's own TCP listener on 127.0.0.1, closed at the end (as the server does)."""
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with multi:
        [listener] = multi.listeners
        assert isinstance(listener, SocketListener)
        yield listener


class Adopting(SocketListener):
    """Accepts as the server does: from the raw socket, through :func:`adopt`."""

    def __init__(self, inner: SocketListener) -> None:
        self.inner = inner
        self.sock: socket.socket = inner.extra(SocketAttribute.raw_socket)

    async def accept(self) -> SocketStream:
        while True:
            try:
                client, _ = self.sock.accept()
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
            else:
                return await adopt(client)

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def _raw_socket(self) -> socket.socket:
        return self.sock


@pytest.fixture
def listener(inner: SocketListener) -> SocketListener:
    """What the server accepts from."""
    return Adopting(inner)


def port_of(listener: SocketListener) -> int:
    return int(listener.extra(SocketAttribute.local_port))


def is_fast(stream: object) -> bool:
    return isinstance(stream, AsyncioStream | TrioStream)


def skip_on_anyio_asyncio(stream: object, why: str) -> None:
    """Skip where AnyIO's own asyncio stream (``ANYECHO_FASTPATH=0``) differs."""
    if type(stream).__module__ == "anyio._backends._asyncio":
        pytest.skip(f"AnyIO's asyncio stream {why}")


@asynccontextmanager
async def connected(
    listener: SocketListener,
) -> AsyncIterator[tuple[SocketStream, SocketStream]]:
    """A (server side, client side) pair over loopback TCP, both closed on exit."""
    client = await anyio.connect_tcp("127.0.0.1", port_of(listener))
    with anyio.fail_after(TIMEOUT):
        server = await listener.accept()
    async with client, server:
        yield server, client


@asynccontextmanager
async def stalled(
    listener: SocketListener,
) -> AsyncIterator[tuple[SocketStream, socket.socket]]:
    """A server side whose peer does not read: a plain non-blocking socket.

    (A client stream would not do: AnyIO's asyncio stream reads ahead, without a
    bound, until its first receive.) Small socket buffers make sends block soon.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port_of(listener)))  # loopback: no waiting
    sock.setblocking(False)
    with sock, anyio.fail_after(TIMEOUT):
        server = await listener.accept()
        raw = server.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        async with server:
            yield server, sock


async def read_at_last(sock: socket.socket) -> bytes:
    """Everything the peer of a :func:`stalled` socket sends, to its end."""
    async with await SocketStream.from_socket(sock.dup()) as client:
        sock.close()
        return await receive_all(client)


# -- which listener -----------------------------------------------------------------


async def test_adopt_picks_our_stream_for_the_backend(
    listener: SocketListener, anyio_backend_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fastpath.ENABLED:
        pytest.skip("ANYECHO_FASTPATH=0")
    ours = TrioStream if anyio_backend_name == "trio" else AsyncioStream
    async with connected(listener) as (server, client):
        assert type(server) is ours
        assert isinstance(server, SocketStream)
        assert await exchange_with(server, client, b"ours") == b"ours"
    monkeypatch.setattr(fastpath, "ENABLED", False)
    async with connected(listener) as (server, client):
        assert type(server).__module__.startswith("anyio.")
        assert await exchange_with(server, client, b"anyio") == b"anyio"


async def exchange_with(
    server: SocketStream, client: SocketStream, data: bytes
) -> bytes:
    await client.send(data)
    await server.send(await receive_exactly(server, len(data)))
    return await receive_exactly(client, len(data))


async def test_bytes_written_counts_what_the_kernel_took(
    listener: SocketListener,
) -> None:
    async with stalled(listener) as (server, sock):
        if not is_fast(server):
            pytest.skip("AnyIO's own streams do not count bytes written")
        assert isinstance(server, _Progress)
        payload = random_bytes(8 * 1024 * 1024)
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.send, payload)  # blocks: the peer does not read
                await anyio.wait_all_tasks_blocked()
                written = server.bytes_written()
                assert 0 < written < len(payload)
                # The peer reads: the count grows while the send is still stuck.
                taken = 0
                while server.bytes_written() == written:
                    with contextlib.suppress(BlockingIOError):
                        taken += len(sock.recv(65536))
                    await anyio.lowlevel.checkpoint()
                assert written < server.bytes_written() < len(payload)
                assert taken > 0
                tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("value", "enabled"), [("0", False), ("off", False), ("1", True), ("", True)]
)
def test_environment_switch(value: str, enabled: bool) -> None:
    code = "import anyecho._fastpath as f; print(f.ENABLED)"
    env = {**os.environ, "ANYECHO_FASTPATH": value}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == str(enabled)


# -- echo, sizes and max_bytes ------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, 1000, 65536, 256 * 1024 + 1, 1024 * 1024 + 3, 16 * 1024 * 1024]
)
async def test_echo_is_exact(listener: SocketListener, size: int) -> None:
    payload = random_bytes(size)
    async with connected(listener) as (server, client):
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(echo, server)
                assert await exchange(client, payload, chunk=300_000) == payload


async def test_receive_honours_max_bytes(listener: SocketListener) -> None:
    payload = random_bytes(300_000)
    async with connected(listener) as (server, client):
        await client.send(payload)
        await client.send_eof()
        with pytest.raises(ValueError, match="max_bytes"):
            await server.receive(0)
        received = bytearray()
        sizes = [1, 7, 100, 4096, 65536, 100_000]
        with anyio.fail_after(TIMEOUT):
            for i in range(10_000):
                size = sizes[i % len(sizes)]
                try:
                    data = await server.receive(size)
                except EndOfStream:
                    break
                assert isinstance(data, bytes)
                assert 1 <= len(data) <= size
                received += data
        assert received == payload


async def test_small_writes_waiting_together_come_out_together(
    listener: SocketListener,
) -> None:
    async with connected(listener) as (server, client):
        skip_on_anyio_asyncio(server, "hands out one transport read per receive")
        for _ in range(100):
            await client.send(b"x" * 100)
            await anyio.sleep(0.001)  # separate reads on the server side
        await wait_arrived(server, 100 * 100)
        with anyio.fail_after(TIMEOUT):
            assert await server.receive(5000) == b"x" * 5000
            assert await server.receive() == b"x" * 5000


async def test_concurrent_receives_are_busy(listener: SocketListener) -> None:
    async with connected(listener) as (server, client):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.receive)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(BusyResourceError):
                await server.receive()
            await client.send(b"x")
        with anyio.fail_after(TIMEOUT):
            await server.send(b"still fine")
            assert await client.receive() == b"still fine"


# -- ends: EOF, half-close, reset, close --------------------------------------------


async def test_end_of_stream_after_peer_eof_and_half_close(
    listener: SocketListener,
) -> None:
    async with connected(listener) as (server, client):
        with anyio.fail_after(TIMEOUT):
            await client.send(b"last words")
            await client.send_eof()
            assert await receive_exactly(server, 10) == b"last words"
            for _ in range(2):  # and stays at the end
                with pytest.raises(EndOfStream):
                    await server.receive()
            # The other direction still works, then ends the same way.
            await server.send(b"reply")
            await server.send_eof()
            assert await receive_all(client) == b"reply"


async def test_half_close_from_the_server_side(listener: SocketListener) -> None:
    async with connected(listener) as (server, client):
        with anyio.fail_after(TIMEOUT):
            await server.send(b"hello")
            await server.send_eof()
            assert await receive_all(client) == b"hello"
            await client.send(b"still listening?")
            assert await receive_exactly(server, 16) == b"still listening?"
            await server.send_eof()  # again: harmless


async def test_reset_is_a_broken_resource(listener: SocketListener) -> None:
    sock = socket.socket()
    sock.connect(("127.0.0.1", port_of(listener)))
    with anyio.fail_after(TIMEOUT):
        server = await listener.accept()
    async with server:
        reset_on_close(sock)
        sock.close()  # RST
        with anyio.fail_after(TIMEOUT), pytest.raises(BrokenResourceError):
            await server.receive()
        with anyio.fail_after(TIMEOUT), pytest.raises(BrokenResourceError):
            for _ in range(100):  # the first sends may still be taken
                await server.send(b"anyone?")
                await anyio.sleep(0.01)


async def test_closed_resource_after_aclose(listener: SocketListener) -> None:
    async with connected(listener) as (server, client):
        skip_on_anyio_asyncio(server, "hands out buffered data after aclose()")
        await client.send(b"unread")
        await server.aclose()
        with pytest.raises(ClosedResourceError):
            await server.receive()
        with pytest.raises(ClosedResourceError):
            await server.send(b"x")
        if is_fast(server):  # (AnyIO's Trio stream returns: nothing to send)
            with pytest.raises(ClosedResourceError):
                await server.send(b"")
        await server.aclose()  # again: harmless
        with anyio.fail_after(TIMEOUT), contextlib.suppress(BrokenResourceError):
            assert await receive_all(client) == b""


async def test_aclose_wakes_a_blocked_receive(listener: SocketListener) -> None:
    async with connected(listener) as (server, _):
        errors: list[BaseException] = []

        async def receive() -> None:
            try:
                await server.receive()
            except BaseException as exc:
                errors.append(exc)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.wait_all_tasks_blocked()
                await server.aclose()
        [error] = errors
        assert isinstance(error, ClosedResourceError)


async def test_aclose_still_delivers_what_was_sent(listener: SocketListener) -> None:
    payload = random_bytes(8 * 1024 * 1024)
    async with stalled(listener) as (server, sock):
        sent = 0
        with anyio.move_on_after(0.5):
            for start in range(0, len(payload), 1024):
                await server.send(payload[start : start + 1024])
                sent = start + 1024
        assert 0 < sent < len(payload), "a peer that does not read must block sends"
        await server.aclose()
        with anyio.fail_after(TIMEOUT):
            received = await read_at_last(sock)
        assert received == payload[: len(received)]
        assert len(received) >= sent


# -- cancellation ---------------------------------------------------------------------


@contextlib.contextmanager
def assert_yields(backend: str) -> Iterator[None]:
    """Fail unless the block lets the event loop run something else."""
    if backend == "trio":
        from trio.testing import assert_checkpoints

        with assert_checkpoints():
            yield
        return
    ran: list[bool] = []
    asyncio.get_running_loop().call_soon(ran.append, True)
    yield
    assert ran, "the event loop did not get to run anything else"


async def test_receive_and_send_are_checkpoints(
    listener: SocketListener, anyio_backend_name: str
) -> None:
    async with connected(listener) as (server, client):
        await client.send(b"ready")
        await wait_arrived(server, 5)
        if isinstance(server, AsyncioStream):
            assert server.read_buffered == 5
        with assert_yields(anyio_backend_name):
            assert await server.receive() == b"ready"  # the data was there
        await server.send(b"o")
        with assert_yields(anyio_backend_name):
            await server.send(b"k")  # a send that follows a send
        assert await receive_exactly(client, 2) == b"ok"


async def test_every_receive_then_send_turn_yields(
    listener: SocketListener, anyio_backend_name: str
) -> None:
    """A connection whose data is always there still lets others run each turn.

    A send straight after a receive may skip its own yield (the receive's was
    enough), but the turn as a whole always yields, so a flood on one connection
    cannot starve the rest of the server.
    """
    async with connected(listener) as (server, client):
        payload = random_bytes(64 * 1024)
        await client.send(payload)
        await client.send_eof()
        echoed = bytearray()
        with anyio.fail_after(TIMEOUT):
            while len(echoed) < len(payload):
                with assert_yields(anyio_backend_name):
                    data = await server.receive(64)  # always waiting but the first
                    await server.send(data)
                echoed += data
            await server.send_eof()
            assert await receive_all(client) == payload


async def test_the_loop_runs_between_a_send_and_the_next_read(
    listener: SocketListener, anyio_backend_name: str
) -> None:
    """Each echo turn yields once, between the send and the next read, which gives
    the peer the time to answer before the stream looks for its answer.

    On Trio the stream makes the ``recv()`` system call itself: the one that
    follows a send must come after the send's yield, or it finds nothing, and the
    receive pays a failed system call, an epoll registration and a wait on every
    echo. On asyncio a receive takes from the transport's buffer, and yields
    before it hands out what is there.
    """
    if anyio_backend_name != "trio":
        async with connected(listener) as (server, client):
            with anyio.fail_after(TIMEOUT):
                await client.send(b"1")
                assert await server.receive() == b"1"
                await server.send(b"1")
                assert await client.receive() == b"1"
                await client.send(b"2")
                await wait_arrived(server, 1)
                with assert_yields(anyio_backend_name):
                    assert await server.receive() == b"2"
        return

    import trio

    steps = 0
    reads: list[int] = []
    sends: list[int] = []
    this = trio.lowlevel.current_task()

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            nonlocal steps
            if task is this:
                steps += 1

    class Spy(socket.socket):
        def recv(self, bufsize: int, flags: int = 0) -> bytes:
            reads.append(steps)
            return super().recv(bufsize, flags)

        def send(self, data: ReadableBuffer, flags: int = 0) -> int:
            sends.append(steps)
            return super().send(data, flags)

    ours, peer = socket.socketpair()
    stream = TrioStream(Spy(fileno=ours.detach()))
    trio.lowlevel.add_instrument(Steps())
    with peer, anyio.fail_after(TIMEOUT):
        async with stream:
            peer.sendall(b"1")
            assert await stream.receive() == b"1"
            await stream.send(b"1")
            assert peer.recv(1) == b"1"
            peer.sendall(b"2")  # the answer is there before the next receive
            reads.clear()
            assert await stream.receive() == b"2"
            assert reads == [reads[0]], "one recv(): the answer was there"
            assert reads[0] > sends[-1], "the recv() came before the send yielded"


async def wait_arrived(stream: SocketStream, size: int) -> None:
    """Until ``size`` bytes sent to ``stream`` wait unread, in its buffer (an
    :class:`AsyncioStream`) or in its socket (a :class:`TrioStream`); AnyIO's own
    stream does not say, and is not waited for."""
    with anyio.fail_after(TIMEOUT):
        while _unread(stream) < size:
            await anyio.lowlevel.checkpoint()  # the loop reads meanwhile


def _unread(stream: SocketStream) -> int:
    if isinstance(stream, AsyncioStream):
        return stream.read_buffered
    if isinstance(stream, TrioStream):
        raw = stream.extra(SocketAttribute.raw_socket)
        waiting = fcntl.ioctl(raw.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(waiting, sys.byteorder)
    return sys.maxsize


async def test_a_send_after_a_receive_is_still_a_cancellation_point(
    listener: SocketListener,
) -> None:
    """A scope cancelled between a receive and a send cancels the send unwritten,
    whichever scope it is; a shield around the send still protects it."""
    async with connected(listener) as (server, client):
        with anyio.fail_after(TIMEOUT):
            await client.send(b"1")
            assert await server.receive() == b"1"
            with CancelScope() as scope:
                scope.cancel()
                await server.send(b"never sent ")
            assert scope.cancelled_caught

            with CancelScope() as outer:
                await client.send(b"2")
                assert await server.receive() == b"2"
                outer.cancel()
                with CancelScope():
                    await server.send(b"nor this ")
            assert outer.cancelled_caught

            with CancelScope() as outer:
                await client.send(b"3")
                assert await server.receive() == b"3"
                outer.cancel()
                with CancelScope(shield=True):
                    await server.send(b"shielded ")
                await anyio.lowlevel.checkpoint()
            assert outer.cancelled_caught

            await server.send(b"sent")
            await server.send_eof()
            assert await receive_all(client) == b"shielded sent"


async def test_cancelled_receive_and_send_have_no_effect(
    listener: SocketListener,
) -> None:
    async with connected(listener) as (server, client):
        await client.send(b"kept")
        await anyio.wait_all_tasks_blocked()
        with CancelScope() as scope:
            scope.cancel()
            await server.receive()
        assert scope.cancelled_caught
        with CancelScope() as scope:
            scope.cancel()
            await server.send(b"never sent ")
        assert scope.cancelled_caught
        with anyio.fail_after(TIMEOUT):
            assert await receive_exactly(server, 4) == b"kept"
            await server.send(b"sent")
            await server.send_eof()
            assert await receive_all(client) == b"sent"


async def test_cancelled_blocked_receive_leaves_the_stream_usable(
    listener: SocketListener,
) -> None:
    async with connected(listener) as (server, client):
        with anyio.move_on_after(0.05) as scope:
            await server.receive()
        assert scope.cancelled_caught
        with anyio.fail_after(TIMEOUT):
            await client.send(b"after")
            assert await receive_exactly(server, 5) == b"after"
            await server.send(b"both ways")
            assert await receive_exactly(client, 9) == b"both ways"


async def test_cancelled_blocked_send(
    listener: SocketListener, anyio_backend_name: str
) -> None:
    chunk = 65536
    payload = random_bytes(64 * 1024 * 1024)
    async with stalled(listener) as (server, sock):
        sent = 0
        with anyio.move_on_after(0.5) as scope:
            for start in range(0, len(payload), chunk):
                await server.send(payload[start : start + chunk])
                sent = start + chunk
        assert scope.cancelled_caught, "a peer that does not read must block sends"
        if isinstance(server, AsyncioStream):
            assert server.write_buffered <= fastpath.WRITE_HIGH + chunk
        if anyio_backend_name == "trio":
            return  # Trio leaves a cancelled send_all's stream in an unknown state.

        # What the cancelled send wrote, if anything, goes out first; the stream
        # goes on in order after it.
        async def finish() -> None:
            await server.send(b"tail")
            await server.send_eof()

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(finish)
                received = await read_at_last(sock)
        assert received.endswith(b"tail")
        body = received[:-4]
        assert len(body) in (sent, sent + chunk)
        assert body == payload[: len(body)]


# -- backpressure ---------------------------------------------------------------------


async def test_read_ahead_is_bounded(listener: SocketListener) -> None:
    payload = random_bytes(32 * 1024 * 1024)
    async with connected(listener) as (server, client):
        skip_on_anyio_asyncio(server, "reads ahead without a bound")
        done = anyio.Event()

        async def send() -> None:
            await client.send(payload)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await anyio.sleep(0.5)  # the server does not receive meanwhile
            assert not done.is_set(), "the server must stop reading"
            if isinstance(server, AsyncioStream):
                assert server.read_limit == fastpath.READ_HIGH_MIN  # no receive yet
                assert 0 < server.read_buffered <= server.read_limit + TRANSPORT_READ
            with anyio.fail_after(TIMEOUT):
                received = await receive_exactly(server, len(payload))
        assert received == payload


async def test_server_backpressure_end_to_end(anyio_backend_name: str) -> None:
    """A client that writes without reading stalls the server at a small bound."""
    streams: list[ByteStream] = []

    def capture(stream: ByteStream) -> ByteStream:
        streams.append(stream)
        return stream

    if not fastpath.ENABLED and anyio_backend_name != "trio":
        pytest.skip("AnyIO's asyncio stream reads ahead without a bound")
    payload = random_bytes(64 * 1024 * 1024)
    with anyio.fail_after(TIMEOUT):
        # drain_timeout=0: the connection is closed as soon as the block ends.
        async with serving(
            wrap_stream=capture, drain_timeout=0, record=False
        ) as server:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect((server.host, server.port))
                sock.setblocking(False)
                written = await write_for(sock, payload, 1.0)
                assert written < len(payload), "the server must stop taking data"
                [counted] = streams
                stream = getattr(counted, "stream", None)
                if anyio_backend_name != "trio":
                    assert isinstance(stream, AsyncioStream)
                    assert stream.read_limit == server.config.receive_size
                    limit = stream.read_limit + TRANSPORT_READ
                    assert stream.read_buffered <= limit
                    limit = fastpath.WRITE_HIGH + server.config.receive_size
                    assert stream.write_buffered <= limit
                stats = server.stats
                held = stats.bytes_received - stats.bytes_sent
                assert stats.bytes_received > 0
                assert held <= server.config.receive_size


async def write_for(sock: socket.socket, payload: bytes, seconds: float) -> int:
    """Write ``payload`` to a non-blocking socket for a while; return bytes taken."""
    written = 0
    with anyio.move_on_after(seconds):
        while written < len(payload):
            try:
                written += sock.send(payload[written : written + 65536])
            except BlockingIOError:
                await anyio.sleep(0.005)  # polls: anyio>=4.6 has no wait_writable()
            else:
                await anyio.lowlevel.checkpoint()
    return written


# -- attributes -----------------------------------------------------------------------


async def test_socket_attributes(listener: SocketListener) -> None:
    async with connected(listener) as (server, client):
        assert server.extra(SocketAttribute.family) == socket.AF_INET
        assert server.extra(SocketAttribute.local_address) == client.extra(
            SocketAttribute.remote_address
        )
        assert server.extra(SocketAttribute.remote_address) == client.extra(
            SocketAttribute.local_address
        )
        assert server.extra(SocketAttribute.local_port) == port_of(listener)
        assert server.extra(SocketAttribute.remote_port) == client.extra(
            SocketAttribute.local_port
        )
        raw = server.extra(SocketAttribute.raw_socket)
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


# -- Unix sockets ---------------------------------------------------------------------


async def test_unix_stream(sock_path: Path) -> None:
    payload = random_bytes(3 * 1024 * 1024 + 5)
    path = str(sock_path)
    async with await anyio.create_unix_listener(path) as inner:
        listener = Adopting(inner)
        with anyio.fail_after(TIMEOUT):
            async with await anyio.connect_unix(path) as client:
                server = await listener.accept()
                async with server, anyio.create_task_group() as tg:
                    assert server.extra(SocketAttribute.family) == socket.AF_UNIX
                    assert server.extra(SocketAttribute.local_address) == path
                    if fastpath.ENABLED:
                        assert is_fast(server)
                    tg.start_soon(echo, server)
                    assert await exchange(client, payload) == payload
