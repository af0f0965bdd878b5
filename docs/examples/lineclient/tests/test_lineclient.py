"""lineclient's tests, against the echo servers of anyecho's pytest plugin.

An echo server answers each line with itself: the perfect server for a
line-based client. The fixtures come from anyecho's plugin (installing anyecho
registers it); ``conftest.py`` chooses the event loops. The servers keep
recordings of what the client sent, and take new faults while a test runs.
"""

from __future__ import annotations

import anyio
import pytest
from lineclient import LineClient, ServerGoneError

from anyecho.faults import Faults
from anyecho.pytest_plugin import EchoServerFactory
from anyecho.testing import RunningServer

pytestmark = pytest.mark.anyio


async def test_request(echo_server: RunningServer) -> None:
    with anyio.fail_after(5):
        async with LineClient(echo_server.host, echo_server.port) as client:
            assert await client.request(b"hello") == b"hello"
        # What went over the wire: the line and its newline, nothing else.
        await echo_server.expect_bytes(b"hello\n")


async def test_requests_share_one_connection(echo_server: RunningServer) -> None:
    with anyio.fail_after(5):
        async with LineClient(echo_server.host, echo_server.port) as client:
            for line in (b"one", b"two", b"three"):
                assert await client.request(line) == line
        [recording] = await echo_server.wait_connections(1)
        assert await recording.wait_ended() == "eof"
    assert recording.data == b"one\ntwo\nthree\n"
    assert client.connects == 1


async def test_retries_once_when_the_server_drops_the_connection(
    echo_server: RunningServer,
) -> None:
    with anyio.fail_after(5):
        async with LineClient(echo_server.host, echo_server.port) as client:
            assert await client.request(b"first") == b"first"
            # The server resets every open connection: the client must notice
            # and retry on a new one.
            assert echo_server.reset_connections() == 1
            assert await client.request(b"second") == b"second"
        first, second = echo_server.recordings
    assert client.connects == 2
    assert first.ended == "aborted"
    assert first.data == b"first\n"
    assert second.data.endswith(b"second\n")


async def test_gives_up_while_the_server_resets_everything(
    echo_server: RunningServer,
) -> None:
    with anyio.fail_after(5):
        async with LineClient(echo_server.host, echo_server.port) as client:
            assert await client.request(b"ok") == b"ok"
            # On cue: from now on every connection, the open one too, is reset
            # before it echoes a byte.
            echo_server.set_faults(Faults(reset_after=0))
            with pytest.raises(ServerGoneError):
                await client.request(b"lost")
            echo_server.clear_faults()
            assert await client.request(b"back") == b"back"
    assert client.connects == 3


async def test_answers_that_come_in_pieces(
    echo_server_factory: EchoServerFactory,
) -> None:
    with anyio.fail_after(5):
        async with (
            echo_server_factory(faults=Faults(fragment=1)) as server,
            LineClient(server.host, server.port) as client,
        ):
            assert await client.request(b"byte by byte") == b"byte by byte"
            assert await client.request(b"again") == b"again"
