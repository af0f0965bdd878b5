"""The registry of open connections (list, close, reset) and the recordings."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import pytest
from anyio import BrokenResourceError, EndOfStream

from anyecho import ConnectionInfo, EchoServer, Recording
from anyecho.faults import Faults
from anyecho.pytest_plugin import EchoServerFactory
from anyecho.testing import serving

from .utils import TIMEOUT, exchange, receive_exactly, reset_on_close, round_trip

pytestmark = pytest.mark.anyio


# --- the registry ------------------------------------------------------------------


async def test_connections_lists_the_open_ones() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            assert server.connections() == []
            async with await server.connect() as first:
                await round_trip(first, b"12345")
                async with await server.connect() as second:
                    await round_trip(second, b"ab")
                    infos = server.connections()
                    assert [info.id for info in infos] == [1, 2]
                    one, two = infos
                    assert isinstance(one, ConnectionInfo)
                    local = first.extra(anyio.abc.SocketAttribute.local_address)
                    assert isinstance(local, tuple)
                    host, port = local[:2]
                    assert one.peer == f"{host}:{port}"
                    assert one.transport == "tcp"
                    # A send is counted once it returns, which may be just after
                    # the client has its echo: the last echo may be uncounted.
                    assert one.bytes_received == 5
                    assert one.bytes_sent in (0, 5)
                    assert two.bytes_received == 2
                    assert two.bytes_sent in (0, 2)
                    assert one.age >= 0
                    assert not one.faulted
                    assert one.opened_at <= two.opened_at
                await server.wait_stats(lambda s: s.active_connections == 1)
                assert [info.id for info in server.connections()] == [1]
            await server.wait_stats(lambda s: s.active_connections == 0)
            assert server.connections() == []


async def test_transports_are_named(
    echo_server_factory: EchoServerFactory, sock_path: Path
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server_factory(unix=[str(sock_path)]) as server:
            async with await server.connect("unix") as unix:
                await round_trip(unix)
                [info] = server.connections()
                assert (info.transport, info.peer) == ("unix", "unix-peer")
        async with echo_server_factory(tls=True) as server:
            async with await server.connect("tls") as tls:
                await round_trip(tls)
                [info] = server.connections()
                assert info.transport == "tls"


async def test_close_one_connection_the_other_goes_on() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            async with (
                await server.connect() as doomed,
                await server.connect() as other,
            ):
                await round_trip(doomed)
                await round_trip(other)
                target = server.connections()[0].id
                assert server.close_connection(target)
                with pytest.raises(EndOfStream):
                    await doomed.receive()
                await round_trip(other, b"still here")
                recording = server.recording(target)
                assert await recording.wait_ended() == "closed"
                assert not server.close_connection(target)  # gone now
                assert not server.reset_connection(12345)
                assert [info.id for info in server.connections()] == [target + 1]


async def test_reset_one_connection_the_other_goes_on() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            async with (
                await server.connect() as doomed,
                await server.connect() as other,
            ):
                await round_trip(doomed)
                await round_trip(other)
                target = server.connections()[0].id
                assert server.reset_connection(target)
                with pytest.raises(BrokenResourceError):
                    await doomed.receive()
                await round_trip(other, b"still here")
                assert await server.recording(target).wait_ended() == "aborted"
    assert not server.stats.errors  # asked for: not an error


async def test_close_and_reset_them_all() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            clients = [await server.connect() for _ in range(3)]
            for client in clients:
                await round_trip(client)
            assert server.close_connections() == 3
            for client in clients:
                with pytest.raises(EndOfStream):
                    await client.receive()
                await client.aclose()
            await server.wait_stats(lambda s: s.active_connections == 0)
            assert server.close_connections() == 0
            clients = [await server.connect() for _ in range(2)]
            for client in clients:
                await round_trip(client)
            assert server.reset_connections() == 2
            for client in clients:
                with pytest.raises(BrokenResourceError):
                    await client.receive()
                await client.aclose()
            await server.wait_stats(lambda s: s.active_connections == 0)
            ended = [r.ended for r in server.recordings]
            assert ended == ["closed"] * 3 + ["aborted"] * 2


async def test_close_a_tls_connection(echo_server_factory: EchoServerFactory) -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server_factory(tls=True) as server:
            async with await server.connect() as client:
                await round_trip(client)
                assert server.close_connections() == 1
                with pytest.raises(EndOfStream):  # close_notify: a clean end
                    await client.receive()


# --- recordings --------------------------------------------------------------------


async def test_recording_keeps_the_bytes_in_order_with_times() -> None:
    pieces = [b"first ", b"second ", b"third"]
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            async with await server.connect() as client:
                for piece in pieces:
                    await round_trip(client, piece)
                local = client.extra(anyio.abc.SocketAttribute.local_address)
                assert isinstance(local, tuple)
                host, port = local[:2]
                await client.send_eof()
                with pytest.raises(EndOfStream):
                    await client.receive()
            [recording] = await server.wait_connections(1)
            assert await recording.wait_ended() == "eof"
    assert isinstance(recording, Recording)
    assert recording.data == b"".join(pieces)
    # Each piece waited for its echo, so each is a chunk of its own.
    assert [chunk for _, chunk in recording.chunks] == pieces
    times = [t for t, _ in recording.chunks]
    assert times == sorted(times)
    assert times[0] >= 0
    assert recording.peer == f"{host}:{port}"
    assert recording.transport == "tcp"
    assert recording.bytes_received == len(b"".join(pieces))
    assert not recording.truncated
    assert repr(recording).startswith("<Recording #1 from ")


async def test_recording_sees_what_the_tls_client_sent(
    echo_server_factory: EchoServerFactory,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with echo_server_factory(tls=True) as server:
            async with await server.connect() as client:
                await round_trip(client, b"secret")
            await server.expect_bytes(b"secret")
            assert server.recordings[0].transport == "tls"


async def test_recording_byte_cap_truncates_and_keeps_counting() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(record_max_bytes=10) as server:
            async with await server.connect() as client:
                await round_trip(client, b"0123456")
                await round_trip(client, b"789abcdef")
                await round_trip(client, b"ghij")
            [recording] = server.recordings
            assert await server.wait_received(20) == 20
    assert recording.data == b"0123456789"
    assert recording.truncated
    assert recording.bytes_received == 20
    with pytest.raises(AssertionError, match=r"keeps only the first 10 bytes"):
        await recording.expect_bytes(b"0123456789abc", timeout=0)


async def test_recording_connection_cap_drops_the_oldest() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(record_max_connections=2) as server:
            for message in (b"one", b"two", b"three"):
                async with await server.connect() as client:
                    await round_trip(client, message)
            recordings = await server.wait_connections(3)
            assert [r.id for r in recordings] == [2, 3]
            assert [r.data for r in recordings] == [b"two", b"three"]
            with pytest.raises(LookupError):
                server.recording(1)


async def test_wait_received_and_wait_bytes_wake_on_arrival() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            async with await server.connect() as client:
                async with anyio.create_task_group() as tg:
                    totals: list[int] = []

                    async def wait() -> None:
                        totals.append(await server.wait_received(8))

                    tg.start_soon(wait)
                    await client.send(b"abcd")
                    [recording] = await server.wait_connections(1)
                    assert await recording.wait_bytes(4) == 4
                    assert not totals
                    await client.send(b"efgh")
                assert totals == [8]
                await receive_exactly(client, 8)
            with pytest.raises(EOFError, match=r"ended \(eof\) after 8 of 9 bytes"):
                await recording.wait_bytes(9)


async def test_expect_bytes_reads_on_across_chunks() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            async with await server.connect() as client:
                for piece in (b"HEL", b"LO WO", b"RLD\n"):
                    await round_trip(client, piece)
                recording = await server.expect_bytes(b"HELLO ")
                await recording.expect_bytes(b"WORLD\n")
                await server.expect_bytes(b"", connection=recording.id)


async def test_expect_bytes_fails_with_a_readable_message() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            async with await server.connect() as client:
                await round_trip(client, b"HELP me")
                with pytest.raises(AssertionError) as failed:
                    await server.expect_bytes(b"HELLO", timeout=TIMEOUT)
                message = str(failed.value)
                assert "expected b'HELLO' of connection #1 from 127.0.0.1:" in message
                assert "received b'HELP '" in message
                assert "first difference at byte 3: expected b'L', got b'P'" in message
                assert "all received: b'HELP me' in 1 chunks" in message
                with pytest.raises(AssertionError, match="nothing more arrived"):
                    await server.expect_bytes(b"HELP me, please", timeout=0.01)
            # Too few, and the connection ended: said so at once, no waiting.
            with pytest.raises(AssertionError, match=r"the connection ended \(eof\)"):
                await server.expect_bytes(b"HELP me, please", timeout=TIMEOUT)


async def test_expect_bytes_without_a_client() -> None:
    async with serving() as server:
        with pytest.raises(AssertionError, match="no client connected within"):
            await server.expect_bytes(b"x", timeout=0.01)


async def test_end_reasons() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(idle_timeout=0.05) as server:
            # The client resets.
            sock = socket.create_connection((server.host, server.port))
            sock.sendall(b"bye")
            await server.wait_received(3)
            reset_on_close(sock)
            sock.close()
            # An idle client.
            async with await server.connect() as idle:
                await round_trip(idle)
                with pytest.raises((EndOfStream, BrokenResourceError)):
                    await idle.receive()
            first, second = await server.wait_connections(2)
            assert await first.wait_ended() == "reset"
            assert await second.wait_ended() == "timeout"


async def test_end_reason_fault_and_stop() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(faults=Faults(close_after=2), drain_timeout=0) as server:
            async with await server.connect() as client:
                assert await exchange(client, b"hello") == b"he"
                [recording] = await server.wait_connections(1)
                assert await recording.wait_ended() == "fault"
                assert recording.data == b"hello"
        async with serving(drain_timeout=0) as server:
            client = await server.connect()
            await round_trip(client)
        [recording] = server.recordings
        assert recording.ended == "stop"
        await client.aclose()


async def test_no_recordings_unless_asked() -> None:
    server = EchoServer(port=0)
    with pytest.raises(RuntimeError, match="record=True"):
        _ = server.recordings
    with pytest.raises(RuntimeError, match="record=True"):
        await server.wait_received(1)


async def test_recordings_follow_the_clock_of_the_loop(
    echo_server_factory: EchoServerFactory, anyio_backend: object
) -> None:
    # Chunk times are on AnyIO's clock: what anyio.current_time() says.
    with anyio.fail_after(TIMEOUT):
        async with echo_server_factory() as server:
            before = anyio.current_time()
            async with await server.connect() as client:
                await round_trip(client)
            after = anyio.current_time()
            [recording] = server.recordings
            [(when, _)] = recording.chunks
            assert before <= recording.opened_at <= recording.opened_at + when <= after
