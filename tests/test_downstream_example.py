"""How another project tests its network client against anyecho.

This file is written as a project that depends on anyecho would write it: after
``pip install anyecho`` the fixtures come from anyecho's pytest plugin (registered
on install), so the tests only ask for them. Nothing is imported from this test
suite. Such a project also picks its event loops with an ``anyio_backend`` fixture,
for example in its ``conftest.py``:

.. code-block:: python

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request):
        return request.param

(Here the one in this project's ``conftest.py`` runs them on asyncio, uvloop and
Trio.)
"""

from __future__ import annotations

import anyio
import pytest

from anyecho.faults import Faults
from anyecho.pytest_plugin import EchoServerFactory
from anyecho.testing import RunningServer

pytestmark = pytest.mark.anyio


# --- the code under test: a tiny request/response client ---------------------------


class ServerHungUpError(ConnectionError):
    """The server ended the connection before answering in full."""


async def ask(host: str, port: int, message: bytes) -> bytes:
    """Send ``message`` and wait for as many bytes back (the caller sets a timeout)."""
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(message)
        answer = bytearray()
        while len(answer) < len(message):
            try:
                answer += await stream.receive()
            except anyio.EndOfStream:
                raise ServerHungUpError(f"got {len(answer)} bytes") from None
            except anyio.BrokenResourceError as exc:
                raise ServerHungUpError("connection reset") from exc
        return bytes(answer)


# --- its tests, each bounded by a timeout -------------------------------------


async def test_ask(echo_server: RunningServer) -> None:
    with anyio.fail_after(5):
        answer = await ask(echo_server.host, echo_server.port, b"hello")
    assert answer == b"hello"
    assert echo_server.stats.total_connections == 1


async def test_ask_reassembles_fragments(
    echo_server_factory: EchoServerFactory,
) -> None:
    faults = Faults(fragment=3, fragment_pause=0.001)
    with anyio.fail_after(5):
        async with echo_server_factory(faults=faults) as server:
            answer = await ask(server.host, server.port, b"a longer message")
    assert answer == b"a longer message"


async def test_ask_waits_for_a_slow_server(
    echo_server_factory: EchoServerFactory,
) -> None:
    with anyio.fail_after(5):
        async with echo_server_factory(faults=Faults(delay=0.05)) as server:
            assert await ask(server.host, server.port, b"slow") == b"slow"


async def test_ask_times_out_on_a_stalled_server(
    echo_server_factory: EchoServerFactory,
) -> None:
    # drain_timeout=0: the stalled connection is dropped as soon as the block ends.
    faults = Faults(stall_after=2)
    with anyio.fail_after(5):
        async with echo_server_factory(faults=faults, drain_timeout=0) as server:
            with pytest.raises(TimeoutError), anyio.fail_after(0.2):
                await ask(server.host, server.port, b"hello")


@pytest.mark.parametrize(
    "faults", [Faults(close_after=2), Faults(reset_after=2)], ids=["close", "reset"]
)
async def test_ask_reports_a_hang_up(
    echo_server_factory: EchoServerFactory, faults: Faults
) -> None:
    with anyio.fail_after(5):
        async with echo_server_factory(faults=faults) as server:
            with pytest.raises(ServerHungUpError):
                await ask(server.host, server.port, b"hello")


async def test_ask_on_some_bad_connections(
    echo_server_factory: EchoServerFactory,
) -> None:
    # Half of the connections are cut short; with a seed, always the same half.
    faults = Faults(close_after=0, fraction=0.5, seed=2)
    outcomes: list[bool] = []
    with anyio.fail_after(5):
        async with echo_server_factory(faults=faults) as server:
            for _ in range(10):
                try:
                    await ask(server.host, server.port, b"hello")
                except ServerHungUpError:
                    outcomes.append(False)
                else:
                    outcomes.append(True)
    assert True in outcomes
    assert False in outcomes
