"""Faults that change while the server runs: which connections they reach, and
the faults only the server can inject (time cut-offs, refuse, blackhole, paused
accepting, slow close, read faults), each as a real client sees it."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import ByteStream

import anyecho
from anyecho import Faults
from anyecho.faults import _streams as streams
from anyecho.faults import default_burst
from anyecho.testing import RunningServer, serving

from .utils import (
    CLOCK_RESOLUTION,
    TIMEOUT,
    read_to_end,
    receive_exactly,
    round_trip,
)

pytestmark = pytest.mark.anyio


async def expect_reset(client: ByteStream) -> None:
    """The next receive fails with a connection reset."""
    with pytest.raises(anyio.BrokenResourceError) as caught:
        while True:
            await client.receive()
    assert isinstance(caught.value.__cause__, ConnectionResetError)


async def expect_end(client: ByteStream) -> None:
    """The next receive is the end of the stream."""
    with pytest.raises(anyio.EndOfStream):
        await client.receive()


def current(server: RunningServer) -> Faults | None:
    return server.faults


# --- the runtime API -------------------------------------------------------------


async def test_faults_are_read_replaced_and_cleared() -> None:
    start = Faults(delay=0.01)
    async with serving(faults=start) as server:
        assert server.faults is start
        assert server.server.faults is start
        assert server.config.faults is start
        other = Faults(fragment=2)
        server.set_faults(other)
        assert current(server) is other
        server.clear_faults()
        assert current(server) is None
        server.server.set_faults(start)
        assert server.server.faults is start
        server.server.set_faults(None)
        assert server.server.faults is None


def test_set_faults_takes_faults_only() -> None:
    server = anyecho.EchoServer(port=0)
    with pytest.raises(TypeError, match="expected Faults"):
        server.set_faults({"delay": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid faults"):
        anyecho.ServerConfig(faults={"delay": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("engaged", [False, True], ids=["plain", "wrapped"])
async def test_reset_on_cue_cuts_an_idle_open_connection(engaged: bool) -> None:
    # "plain": the server never had faults, so the connection runs the plain
    # echo; "wrapped": it opened under faults, which were cleared since.
    faults = Faults(delay=0) if engaged else None
    with anyio.fail_after(TIMEOUT):
        async with serving(faults=faults) as server, await server.connect() as client:
            server.clear_faults()
            await round_trip(client)
            server.set_faults(Faults(reset_after=0))
            await expect_reset(client)
            stats = await server.wait_stats(lambda s: s.active_connections == 0)
            # A new connection is reset too, before its first byte.
            async with await server.connect() as second:
                await expect_reset(second)
            server.clear_faults()
            async with await server.connect() as third:
                await round_trip(third)
    stats = server.stats
    assert stats.faults_injected["reset"] == 2
    assert not stats.errors
    summary = stats.summary()
    assert "faults injected: " in summary
    assert "reset 2" in summary.split("faults injected: ")[1]
    assert summary.endswith("errors: none")


@pytest.mark.parametrize("fault", ["close_after", "close_after_seconds"])
async def test_close_on_cue_ends_an_open_stream(fault: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server, await server.connect() as client:
            await round_trip(client)
            options: dict[str, Any] = {fault: 0}
            server.set_faults(Faults(**options))
            await expect_end(client)
            await client.send(b"late")  # read and discarded: no reset
            await client.send_eof()
            await server.wait_stats(lambda s: s.active_connections == 0)
    assert server.stats.faults_injected == {"close": 1}
    assert not server.stats.errors


async def test_stall_on_cue_keeps_an_open_connection_silent() -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(drain_timeout=0) as server,
            await server.connect() as client,
        ):
            await round_trip(client)
            server.set_faults(Faults(stall_after=0))
            await server.wait_stats(lambda s: s.faults_injected["stall"] == 1)
            await client.send(b"into the void")
            with anyio.move_on_after(0.2) as window:
                await client.receive()
            assert window.cancelled_caught
            # Clearing does not revive it: a cut is final.
            server.clear_faults()
            await client.send(b"still nothing")
            with anyio.move_on_after(0.1) as window:
                await client.receive()
            assert window.cancelled_caught
            assert server.stats.active_connections == 1


async def test_a_cut_reaches_only_the_chosen_share() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            clients = [await server.connect() for _ in range(20)]
            try:
                for client in clients:
                    await round_trip(client)
                server.set_faults(Faults(reset_after=0, fraction=0.5, seed=7))
                cut = await server.wait_stats(
                    lambda s: (
                        s.active_connections + s.faults_injected["reset"] == 20
                        and s.active_connections < 20
                    )
                )
                survivors = cut.active_connections
                assert 0 < survivors < 20
                server.clear_faults()
                alive = 0
                for client in clients:
                    try:
                        await round_trip(client)
                    except (anyio.BrokenResourceError, anyio.EndOfStream):
                        continue
                    alive += 1
                assert alive == survivors
            finally:
                for client in clients:
                    await client.aclose()


async def test_delay_reaches_an_open_connection_at_its_next_chunk() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server, await server.connect() as client:
            await round_trip(client)
            server.set_faults(Faults(delay=0.2))
            start = anyio.current_time()
            await round_trip(client)
            assert anyio.current_time() - start >= 0.2 - CLOCK_RESOLUTION
            assert server.stats.faults_injected["delay"] == 1
            server.clear_faults()
            await round_trip(client)
            await client.send_eof()
            assert await read_to_end(client) == b""
    assert not server.stats.errors


async def test_byte_counts_start_when_the_faults_reach_a_connection() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server, await server.connect() as client:
            await round_trip(client, b"x" * 100)
            server.set_faults(Faults(close_after=10))
            await client.send(b"y" * 50)
            assert await read_to_end(client) == b"y" * 10
    assert server.stats.faults_injected["close"] == 1


async def test_faults_from_the_config_apply_from_the_start() -> None:
    config = anyecho.ServerConfig(host="127.0.0.1", port=0, faults=Faults(refuse=True))
    with anyio.fail_after(TIMEOUT):
        async with serving(config) as server, await server.connect() as client:
            await expect_reset(client)
    assert server.stats.faults_injected["refuse"] == 1


async def test_wrap_stream_and_faults_compose() -> None:
    seen: list[bytes] = []

    class Recorder(anyecho.StreamWrapper):
        async def send(self, item: bytes) -> None:
            seen.append(item)
            await self.stream.send(item)

    faults = Faults(fragment=2)
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=faults, wrap_stream=Recorder) as server,
            await server.connect() as client,
        ):
            await round_trip(client, b"abcdef")
    # The wrapper sees the traffic on its way to the socket: in pieces.
    assert seen == [b"ab", b"cd", b"ef"]


async def test_fixture_servers_take_and_change_faults(
    echo_server: RunningServer,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with await echo_server.connect() as client:
            await round_trip(client)
            echo_server.set_faults(Faults(reset_after=0))
            await expect_reset(client)
        assert echo_server.faults == Faults(reset_after=0)
        echo_server.clear_faults()
        async with await echo_server.connect() as client:
            await round_trip(client)


# --- time cut-offs ---------------------------------------------------------------


@pytest.mark.parametrize("after_first_byte", [False, True])
async def test_reset_after_seconds(after_first_byte: bool) -> None:
    faults = Faults(reset_after_seconds=0.2, after_first_byte=after_first_byte)
    with anyio.fail_after(TIMEOUT):
        async with serving(faults=faults) as server:
            start = anyio.current_time()  # the server's clock starts after this
            async with await server.connect() as client:
                if after_first_byte:
                    # The clock has not started: the connection stays.
                    with anyio.move_on_after(0.3):
                        await client.receive()
                        pytest.fail("received bytes unasked")
                    start = anyio.current_time()
                    await round_trip(client)
                await expect_reset(client)
                assert anyio.current_time() - start >= 0.2 - CLOCK_RESOLUTION
    assert server.stats.faults_injected["reset"] == 1
    assert not server.stats.errors


async def test_close_after_seconds_keeps_echoing_until_then() -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=Faults(close_after_seconds=0.3)) as server,
            await server.connect() as client,
        ):
            await round_trip(client)  # before the deadline: a normal echo
            await expect_end(client)
            await client.send_eof()
            await server.wait_stats(lambda s: s.active_connections == 0)
    assert server.stats.faults_injected == {"close": 1}


async def test_stall_after_seconds() -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=Faults(stall_after_seconds=0), drain_timeout=0) as server,
            await server.connect() as client,
        ):
            await server.wait_stats(lambda s: s.faults_injected["stall"] == 1)
            await client.send(b"hello?")
            with anyio.move_on_after(0.2) as window:
                await client.receive()
            assert window.cancelled_caught
            assert server.stats.bytes_received == 0


async def test_byte_and_time_cutoffs_combine_first_one_wins() -> None:
    faults = Faults(close_after=4, reset_after_seconds=30)
    with anyio.fail_after(TIMEOUT):
        async with serving(faults=faults) as server, await server.connect() as client:
            await client.send(b"abcdefgh")
            assert await read_to_end(client) == b"abcd"
    assert server.stats.faults_injected == {"close": 1}


# --- refuse, blackhole, paused accepting, slow close -------------------------------


async def test_refuse_resets_at_once() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(faults=Faults(refuse=True)) as server:
            for _ in range(3):
                async with await server.connect() as client:
                    await expect_reset(client)
            server.clear_faults()
            async with await server.connect() as client:
                await round_trip(client)
    stats = server.stats
    assert stats.faults_injected == {"refuse": 3}
    assert not stats.errors
    assert stats.bytes_received == 4


async def test_refuse_a_share_of_connections_reproducibly() -> None:
    async def pattern(seed: int) -> list[bool]:
        refused: list[bool] = []
        faults = Faults(refuse=True, fraction=0.5, seed=seed)
        async with serving(faults=faults) as server:
            for _ in range(16):
                async with await server.connect() as client:
                    try:
                        await round_trip(client)
                    except anyio.BrokenResourceError:
                        refused.append(True)
                    else:
                        refused.append(False)
        return refused

    with anyio.fail_after(TIMEOUT):
        first = await pattern(5)
        assert await pattern(5) == first
    assert 0 < sum(first) < 16


async def test_blackhole_reads_nothing_and_answers_nothing() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(faults=Faults(blackhole=True)) as server:
            async with await server.connect() as client:
                await server.wait_stats(lambda s: s.faults_injected["blackhole"] == 1)
                await client.send(b"anyone there?")
                with anyio.move_on_after(0.2) as window:
                    await client.receive()
                assert window.cancelled_caught
                assert server.stats.active_connections == 1
            # The client went away: so does the connection.
            await server.wait_stats(lambda s: s.active_connections == 0)
            server.clear_faults()
            async with await server.connect() as client:
                await round_trip(client)
    assert server.stats.bytes_received == 4  # nothing from the blackholed one
    assert not server.stats.errors


async def test_slow_close_holds_the_end_of_stream() -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=Faults(slow_close=0.3)) as server,
            await server.connect() as client,
        ):
            await client.send(b"bye")
            await client.send_eof()
            assert await receive_exactly(client, 3) == b"bye"
            start = anyio.current_time()
            await expect_end(client)
            assert anyio.current_time() - start >= 0.3 - CLOCK_RESOLUTION * 2
    assert server.stats.faults_injected["slow_close"] == 1


async def test_a_paused_server_lets_connects_time_out() -> None:
    # A small listen queue: once it is full, the kernel drops the SYNs and a
    # connect does not complete (Linux), until the server accepts again.
    with anyio.fail_after(TIMEOUT):
        async with serving(backlog=1) as server:
            server.pause_accepting()
            queued: list[ByteStream] = []
            timed_out = False
            try:
                for _ in range(8):
                    with anyio.move_on_after(0.5) as attempt:
                        queued.append(await server.connect())
                    if attempt.cancelled_caught:
                        timed_out = True
                        break
                assert timed_out, "every connect completed with accepting paused"
                assert server.stats.total_connections == 0
                server.resume_accepting()
                for client in queued:  # the queued ones are served now
                    await round_trip(client)
            finally:
                for client in queued:
                    await client.aclose()
    assert server.stats.faults_injected["pause_accepting"] == 1


async def test_pause_accepting_for_a_while_and_as_a_fault() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server:
            server.pause_accepting(0.2)
            start = anyio.current_time()
            async with await server.connect() as client:  # queued, then served
                await round_trip(client)
            assert anyio.current_time() - start >= 0.2 - CLOCK_RESOLUTION
            server.set_faults(Faults(pause_accepting=True))
            server.resume_accepting()  # the fault still holds
            async with await server.connect() as client:
                with anyio.move_on_after(0.2) as window:
                    await round_trip(client)
                assert window.cancelled_caught
                server.clear_faults()
                await round_trip(client)


# --- what the server reads ---------------------------------------------------------


async def test_read_throttle_blocks_the_client_send() -> None:
    rate = 2000.0
    with anyio.fail_after(TIMEOUT):
        async with serving(faults=Faults(read_throttle=rate)) as server:
            with socket.create_connection((server.host, server.port)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                sock.setblocking(False)
                start = anyio.current_time()
                sent = 0
                chunk = b"x" * 65536
                with pytest.raises(BlockingIOError):
                    for _ in range(10_000):
                        sent += sock.send(chunk)
                        await anyio.lowlevel.checkpoint()  # let the server read
                # The client's send would block: the server has read only what
                # the throttle let through (a burst, then the rate), far less.
                received = server.stats.bytes_received
                elapsed = anyio.current_time() - start
                assert received <= default_burst(rate) + rate * elapsed
                assert received < sent
                # It goes on reading (and echoing), at that pace.
                await server.wait_stats(
                    lambda s: s.faults_injected["read_throttle"] == 1
                )
                echoed = 0
                while echoed < received + default_burst(rate):
                    await anyio.wait_readable(sock)
                    echoed += len(sock.recv(65536))
    assert sent > 64 * 1024


async def test_read_delay_holds_each_read() -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=Faults(read_delay=0.1)) as server,
            await server.connect() as client,
        ):
            start = anyio.current_time()
            await round_trip(client)
            await round_trip(client)
            assert anyio.current_time() - start >= 0.2 - CLOCK_RESOLUTION * 2
    assert server.stats.faults_injected["read_delay"] == 1


# --- jitter, and every random choice follows the seed -------------------------------


@pytest.mark.parametrize("distribution", ["uniform", "normal", "pareto"])
async def test_jitter_follows_the_seed(
    distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[float] = []
    draw = streams.draw_delay

    def recording_draw(*args: Any) -> float:
        value = draw(*args)
        drawn.append(value)
        return 0.0  # keep the test quick: the draws are what is compared

    monkeypatch.setattr(streams, "draw_delay", recording_draw)

    async def run(seed: int) -> list[float]:
        drawn.clear()
        faults = Faults(
            delay=0.05,
            jitter=0.02,
            jitter_distribution=distribution,  # type: ignore[arg-type]
            fraction=0.5,
            seed=seed,
        )
        async with serving(faults=faults) as server:
            for _ in range(6):
                async with await server.connect() as client:
                    for message in (b"a", b"bb", b"ccc"):
                        await round_trip(client, message)
        return list(drawn)

    with anyio.fail_after(TIMEOUT):
        first = await run(11)
        again = await run(11)
        other = await run(12)
    assert first == again
    assert first != other
    assert 0 < len(first) < 18  # a share of the 6 connections, 3 chunks each
    assert len(first) % 3 == 0
    assert all(value >= 0 for value in first)
    assert len(set(first)) > 1


# --- the fields as JSON ------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        Faults(delay=(0.01, 0.05), jitter=0.01, jitter_distribution="normal"),
        Faults(read_throttle=1024, read_throttle_burst=64, read_delay=0.5),
        Faults(reset_after_seconds=2, after_first_byte=True, close_after=10),
        Faults(refuse=True, fraction=0.25, seed=-3),
        Faults(blackhole=True, slow_close=1, pause_accepting=True),
    ],
)
def test_faults_travel_as_json(faults: Faults) -> None:
    text = json.dumps(dataclasses.asdict(faults))
    assert Faults(**json.loads(text)) == faults


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": [1, 2, 3]}, "invalid delay"),
        ({"delay": [2, 1]}, "min is above max"),
        ({"jitter": -1}, "invalid jitter -1"),
        ({"jitter": 1, "jitter_distribution": "cauchy"}, "invalid jitter_distribution"),
        ({"jitter_distribution": "normal"}, "it needs jitter"),
        ({"read_throttle": 0}, "invalid read_throttle 0"),
        ({"read_throttle_burst": 10}, "it needs read_throttle"),
        ({"read_delay": "1s"}, "invalid read_delay '1s'"),
        ({"close_after_seconds": 1, "reset_after_seconds": 1}, "cannot be combined"),
        ({"stall_after_seconds": float("nan")}, "invalid stall_after_seconds"),
        ({"after_first_byte": True}, "it needs close_after_seconds"),
        ({"refuse": 1}, "invalid refuse 1: expected true or false"),
        ({"refuse": True, "blackhole": True}, "cannot be combined"),
        ({"slow_close": None, "pause_accepting": "yes"}, "invalid pause_accepting"),
        ({"close_after": 1.5}, "invalid close_after 1.5"),
    ],
)
def test_bad_values_are_one_line_value_errors(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        Faults(**options)
    assert "\n" not in str(caught.value)


def test_server_only_faults_are_no_stream_wrapper() -> None:
    with pytest.raises(ValueError, match="refuse needs the server"):
        Faults(refuse=True).stream_wrapper()
    assert Faults(slow_close=1, read_delay=1).stream_wrapper() is not None


async def test_faults_reach_a_connection_in_the_middle_of_a_send_losing_nothing() -> (
    None
):
    payload = bytes(range(256)) * 16384  # 4 MiB: more than the socket buffers hold
    with anyio.fail_after(TIMEOUT):
        async with serving() as server, await server.connect() as client:
            received = bytearray()

            async def send() -> None:
                await client.send(payload)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                # The echo has begun; the server is in the middle of it.
                received += await client.receive()
                server.set_faults(Faults(delay=0.01))
                while len(received) < len(payload):
                    received += await client.receive()
            assert received == payload
            await server.wait_stats(lambda s: s.faults_injected["delay"] == 1)
            start = anyio.current_time()
            await round_trip(client)
            assert anyio.current_time() - start >= 0.01 - CLOCK_RESOLUTION
    assert not server.stats.errors
