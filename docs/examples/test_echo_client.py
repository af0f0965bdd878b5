"""A client's tests, against the echo servers of anyecho's pytest plugin.

The code under test is ``request_line``: send a line, read the answer up to its
newline. The tests need no server of their own: installing anyecho registers its
fixtures with pytest. ``conftest.py`` chooses the event loops.
"""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import ByteStream

from anyecho.faults import Faults
from anyecho.pytest_plugin import EchoServerFactory
from anyecho.testing import RunningServer

pytestmark = pytest.mark.anyio


# --- the code under test -----------------------------------------------------


class ServerHungUpError(ConnectionError):
    """The server ended the connection before the answer was complete."""


async def request_line(stream: ByteStream, line: bytes) -> bytes:
    """Send ``line`` and a newline; return the answer, up to its newline."""
    try:
        await stream.send(line + b"\n")
    except anyio.BrokenResourceError as exc:
        raise ServerHungUpError("before the request went out") from exc
    answer = b""
    while not answer.endswith(b"\n"):
        try:
            answer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise ServerHungUpError(f"after {len(answer)} bytes") from exc
    return answer[:-1]


# --- its tests ---------------------------------------------------------------


async def test_round_trip(echo_server: RunningServer) -> None:
    async with await echo_server.connect() as stream:
        assert await request_line(stream, b"hello") == b"hello"
    assert echo_server.stats.total_connections == 1


async def test_answer_in_pieces(echo_server_factory: EchoServerFactory) -> None:
    faults = Faults(fragment=2, fragment_pause=0.001)  # 2 bytes at a time
    async with (
        echo_server_factory(faults=faults) as server,
        await server.connect() as stream,
    ):
        assert await request_line(stream, b"a longer line") == b"a longer line"


async def test_slow_answer(echo_server_factory: EchoServerFactory) -> None:
    async with (
        echo_server_factory(faults=Faults(delay=0.05)) as server,
        await server.connect() as stream,
    ):
        with anyio.fail_after(5):
            assert await request_line(stream, b"slow") == b"slow"


@pytest.mark.parametrize("cutoff", ["close_after", "reset_after"])
async def test_server_hangs_up(
    echo_server_factory: EchoServerFactory, cutoff: str
) -> None:
    faults = Faults(**{cutoff: 3})  # three bytes of the answer, then EOF or RST
    async with (
        echo_server_factory(faults=faults) as server,
        await server.connect() as stream,
    ):
        with pytest.raises(ServerHungUpError):
            await request_line(stream, b"hello")


async def test_stalled_server(echo_server_factory: EchoServerFactory) -> None:
    async with (
        echo_server_factory(faults=Faults(stall_after=0)) as server,
        await server.connect() as stream,
    ):
        with pytest.raises(TimeoutError), anyio.fail_after(0.2):
            await request_line(stream, b"anyone there?")


async def test_tls(echo_server_factory: EchoServerFactory) -> None:
    async with (
        echo_server_factory(tls=True) as server,
        await server.connect() as stream,  # trusts the test CA
    ):
        assert await request_line(stream, b"secret") == b"secret"


async def test_server_cuts_the_connection_on_cue(echo_server: RunningServer) -> None:
    async with await echo_server.connect() as stream:
        assert await request_line(stream, b"first") == b"first"
        echo_server.set_faults(Faults(reset_after=0))  # reset it now, idle as it is
        with pytest.raises(ServerHungUpError):
            await request_line(stream, b"second")
    echo_server.clear_faults()  # the next connection is served again
    async with await echo_server.connect() as stream:
        assert await request_line(stream, b"third") == b"third"
    assert echo_server.stats.faults_injected["reset"] == 1


async def test_refused_connection(echo_server_factory: EchoServerFactory) -> None:
    async with (
        echo_server_factory(faults=Faults(refuse=True)) as server,
        await server.connect() as stream,  # the connect succeeds...
    ):
        with pytest.raises(ServerHungUpError):  # ...and is reset at once
            await request_line(stream, b"hello")
