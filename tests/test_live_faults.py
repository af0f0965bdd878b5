"""Faults that change while the server runs: which connections they reach, and
the faults only the server can inject (time cut-offs, refuse, blackhole, paused
accepting, slow close, read faults), each as a real client sees it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream

import anyecho
from anyecho import Faults
from anyecho.testing import RunningServer, serving

from .utils import CLOCK_RESOLUTION, TIMEOUT, read_to_end, round_trip

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
