"""Fault injection: each fault as a real client sees it over loopback, the
wrappers on in-memory streams, the ``Faults`` description and its command line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NoReturn

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import ByteStream
from hypothesis import given, settings
from hypothesis import strategies as st

import anyecho
from anyecho.faults import (
    Faults,
    add_fault_arguments,
    close_after,
    default_burst,
    delay,
    faults_from_args,
    fragment,
    reset_after,
    stall_after,
    throttle,
)
from anyecho.testing import serving

from .utils import (
    CLOCK_RESOLUTION,
    TIMEOUT,
    MemoryStream,
    SendRecorder,
    receive_all,
    receive_exactly,
    recording,
    round_trip,
)

pytestmark = pytest.mark.anyio

PAYLOAD = bytes(range(256)) * 12  # 3072 bytes, each offset recognisable


async def send_and_receive_forever(
    stream: ByteStream, payload: bytes, into: bytearray
) -> NoReturn:
    await stream.send(payload)
    while True:
        into += await stream.receive()


# --- loopback: what a client sees -------------------------------------------------


@pytest.mark.parametrize("seconds", [0.05, (0.02, 0.04)], ids=["fixed", "range"])
async def test_delay_holds_every_chunk(seconds: float | tuple[float, float]) -> None:
    least = seconds if isinstance(seconds, float) else seconds[0]
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=Faults(delay=seconds, seed=1)) as server,
            await server.connect() as client,
        ):
            for message in (b"one", b"two", b"three"):
                start = time.perf_counter()
                await round_trip(client, message)
                assert time.perf_counter() - start >= least - CLOCK_RESOLUTION


async def test_fragment_sends_small_pieces() -> None:
    recorders: list[SendRecorder] = []
    faults = Faults(fragment=100)
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=faults, wrap_stream=recording(recorders)) as server,
            await server.connect() as client,
        ):
            await client.send(PAYLOAD)
            assert await receive_exactly(client, len(PAYLOAD)) == PAYLOAD
    (recorder,) = recorders
    assert max(recorder.sizes) <= 100
    assert sum(recorder.sizes) == len(PAYLOAD)
    assert len(recorder.sizes) >= math.ceil(len(PAYLOAD) / 100)


async def test_fragment_pause_spaces_the_pieces() -> None:
    # The client cannot rely on reading one piece per receive (pieces that arrive
    # while it is busy are joined in its socket buffer), but the echo of the whole
    # payload cannot finish before every pause between its pieces has passed.
    recorders: list[SendRecorder] = []
    size, pause, length = 100, 0.01, 1000
    faults = Faults(fragment=size, fragment_pause=pause)
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=faults, wrap_stream=recording(recorders)) as server,
            await server.connect() as client,
        ):
            start = time.perf_counter()
            await client.send(PAYLOAD[:length])
            assert await receive_exactly(client, length) == PAYLOAD[:length]
            elapsed = time.perf_counter() - start
    (recorder,) = recorders
    assert max(recorder.sizes) <= size
    assert elapsed >= (len(recorder.sizes) - 1) * (pause - CLOCK_RESOLUTION)
    assert len(recorder.sizes) - 1 >= math.ceil(length / size) - 1


async def test_throttle_caps_the_rate() -> None:
    rate, length = 50_000.0, 12_000
    burst = default_burst(rate)
    recorders: list[SendRecorder] = []
    faults = Faults(throttle=rate)
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=faults, wrap_stream=recording(recorders)) as server,
            await server.connect() as client,
        ):
            start = time.perf_counter()
            payload = PAYLOAD * 4
            await client.send(payload[:length])
            assert await receive_exactly(client, length) == payload[:length]
            elapsed = time.perf_counter() - start
    # At most ``burst`` bytes at once, then ``rate`` bytes per second: only a lower
    # bound on the time is a property of the server (a loaded machine is slower).
    assert elapsed >= (length - burst) / rate - 0.005
    (recorder,) = recorders
    assert max(recorder.sizes) <= burst


@pytest.mark.parametrize("limit", [0, 1000])
async def test_close_after_ends_the_stream_after_exactly_n_bytes(limit: int) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=Faults(close_after=limit)) as server,
            await server.connect() as client,
        ):
            await client.send(PAYLOAD)
            assert await receive_all(client) == PAYLOAD[:limit]
    stats = server.stats
    assert stats.bytes_sent == limit
    # A clean close: the rest was read and discarded, nobody was reset.
    assert stats.bytes_received == len(PAYLOAD)
    assert not stats.errors


@pytest.mark.parametrize("limit", [0, 1000])
async def test_reset_after_resets_the_connection(limit: int) -> None:
    received = bytearray()
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=Faults(reset_after=limit)) as server,
            await server.connect() as client,
        ):
            with pytest.raises(anyio.BrokenResourceError) as caught:
                await send_and_receive_forever(client, PAYLOAD, received)
    assert isinstance(caught.value.__cause__, ConnectionError)
    if limit:  # the client's send went out before the reset could
        assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert len(received) <= limit
    assert received == PAYLOAD[: len(received)]
    assert server.stats.bytes_sent == limit


@pytest.mark.parametrize("limit", [0, 1000])
async def test_stall_after_keeps_the_connection_open_and_silent(limit: int) -> None:
    with anyio.fail_after(TIMEOUT):
        # drain_timeout=0: the stalled connection is closed as soon as we leave.
        faults = Faults(stall_after=limit)
        async with (
            serving(faults=faults, drain_timeout=0) as server,
            await server.connect() as client,
        ):
            await client.send(PAYLOAD)
            assert await receive_exactly(client, limit) == PAYLOAD[:limit]
            with anyio.move_on_after(0.2) as window:
                data = await client.receive()
                pytest.fail(f"received {len(data)} bytes from a stalled server")
            # Neither an end of stream nor a reset: still open, just silent.
            assert window.cancelled_caught
            await client.send(b"more")
            stats = server.stats
            assert stats.bytes_received == limit  # it stopped reading, too
            assert stats.bytes_sent == limit
            if limit:
                assert stats.active_connections == 1


async def test_faults_compose() -> None:
    faults = Faults(delay=0.01, fragment=7, throttle=1_000_000, seed=3)
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=faults) as server,
            await server.connect() as client,
        ):
            start = time.perf_counter()
            for offset in range(0, 600, 200):
                await client.send(PAYLOAD[offset : offset + 200])
            assert await receive_exactly(client, 600) == PAYLOAD[:600]
            assert time.perf_counter() - start >= 0.01 - CLOCK_RESOLUTION


async def test_fraction_spares_connections() -> None:
    # fraction=0 injects nothing: no wrapper at all.
    with anyio.fail_after(TIMEOUT):
        faults = Faults(close_after=0, fraction=0)
        async with serving(faults=faults) as server:
            assert server.config.wrap_stream is None
            async with await server.connect() as client:
                await round_trip(client)


# --- the same faults over TLS and Unix sockets, not over UDP ------------------------


@pytest.fixture(params=["tls", "unix"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def transport_options(
    request: pytest.FixtureRequest, transport: str, sock_path: Path
) -> dict[str, Any]:
    """``serving()`` options for a server that listens on ``transport`` too."""
    if transport == "tls":
        return {
            "ssl_context": request.getfixturevalue("anyecho_server_ssl_context"),
            "client_ssl_context": request.getfixturevalue("anyecho_client_ssl_context"),
        }
    return {"unix": (str(sock_path),)}


async def test_close_after_over(
    transport: Literal["tls", "unix"], transport_options: dict[str, Any]
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=Faults(close_after=1000), **transport_options) as server,
            await server.connect(transport) as client,
        ):
            await client.send(PAYLOAD)
            assert await receive_all(client) == PAYLOAD[:1000]
    assert server.stats.bytes_sent == 1000


async def test_reset_after_over(
    transport: Literal["tls", "unix"], transport_options: dict[str, Any]
) -> None:
    received = bytearray()
    with anyio.fail_after(TIMEOUT):
        faults = Faults(reset_after=1000)
        async with serving(faults=faults, **transport_options) as server:
            client = await server.connect(transport)
            try:
                # TLS gets a TCP reset; a Unix socket has none, and ends either way.
                errors = (anyio.BrokenResourceError, anyio.EndOfStream)
                with pytest.raises(errors if transport == "unix" else errors[0]):
                    await send_and_receive_forever(client, PAYLOAD, received)
            finally:  # a TLS close would try to say goodbye over the reset
                await anyio.aclose_forcefully(client)
    assert len(received) <= 1000
    assert received == PAYLOAD[: len(received)]


async def test_stall_after_over(
    transport: Literal["tls", "unix"], transport_options: dict[str, Any]
) -> None:
    faults = Faults(stall_after=1000)
    with anyio.fail_after(TIMEOUT):
        async with serving(
            faults=faults, drain_timeout=0, **transport_options
        ) as server:
            client = await server.connect(transport)
            try:
                await client.send(PAYLOAD)
                assert await receive_exactly(client, 1000) == PAYLOAD[:1000]
                with anyio.move_on_after(0.2) as window:
                    await client.receive()
                assert window.cancelled_caught
                assert server.stats.active_connections == 1
            finally:  # a TLS close would wait for the stalled server's goodbye
                await anyio.aclose_forcefully(client)


async def test_fragment_and_delay_over(
    transport: Literal["tls", "unix"], transport_options: dict[str, Any]
) -> None:
    recorders: list[SendRecorder] = []
    faults = Faults(fragment=100, delay=0.02)
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(
                faults=faults, wrap_stream=recording(recorders), **transport_options
            ) as server,
            await server.connect(transport) as client,
        ):
            start = time.perf_counter()
            await client.send(PAYLOAD[:1000])
            assert await receive_exactly(client, 1000) == PAYLOAD[:1000]
            assert time.perf_counter() - start >= 0.02 - CLOCK_RESOLUTION
    (recorder,) = recorders
    assert max(recorder.sizes) <= 100


@pytest.mark.parametrize("mode", ["reset", "close"])
async def test_cut_on_cue_over(
    transport: Literal["tls", "unix"], transport_options: dict[str, Any], mode: str
) -> None:
    # A connection that runs without faults, cut while idle by set_faults.
    with anyio.fail_after(TIMEOUT):
        async with serving(**transport_options) as server:
            client = await server.connect(transport)
            try:
                await round_trip(client)
                cue = (
                    Faults(reset_after=0) if mode == "reset" else Faults(close_after=0)
                )
                server.set_faults(cue)
                ends: tuple[type[Exception], ...] = (anyio.EndOfStream,)
                if mode == "reset":  # a Unix socket has no reset: it ends
                    ends = (anyio.BrokenResourceError, anyio.EndOfStream)
                with pytest.raises(ends):
                    await client.receive()
                await server.wait_stats(lambda s: s.faults_injected[mode] == 1)
            finally:
                await anyio.aclose_forcefully(client)
            await server.wait_stats(lambda s: s.active_connections == 0)
    assert not server.stats.errors


async def test_datagrams_are_not_faulted() -> None:
    # Faults wrap stream connections; UDP echo answers as usual.
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(faults=Faults(close_after=0), udp=True) as server,
            await server.connect_udp() as udp,
        ):
            await udp.send(b"datagram")
            assert await udp.receive() == b"datagram"


# --- the wrappers on in-memory streams --------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6),
    size=st.integers(min_value=1, max_value=64),
)
async def test_fragment_keeps_every_byte(chunks: list[bytes], size: int) -> None:
    memory = MemoryStream(chunks)
    with anyio.fail_after(TIMEOUT):
        echoed = await anyecho.echo(fragment(memory, size))
    assert b"".join(memory.sent) == b"".join(chunks)
    assert echoed == len(b"".join(chunks))
    assert all(1 <= len(piece) <= size for piece in memory.sent)
    assert memory.eof


@settings(max_examples=30, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6),
    burst=st.integers(min_value=1, max_value=100),
)
async def test_throttle_keeps_every_byte(chunks: list[bytes], burst: int) -> None:
    memory = MemoryStream(chunks)
    with anyio.fail_after(TIMEOUT):
        await anyecho.echo(throttle(memory, 10_000_000, burst=burst))
    assert b"".join(memory.sent) == b"".join(chunks)
    assert all(1 <= len(piece) <= burst for piece in memory.sent)


async def test_close_after_in_memory() -> None:
    memory = MemoryStream([b"abc", b"defg", b"hij"])
    with anyio.fail_after(TIMEOUT):
        await anyecho.echo(close_after(memory, 5))
    assert memory.sent == [b"abc", b"de"]
    assert memory.eof
    assert memory.unread == []  # discarded up to the peer's EOF


async def test_reset_after_without_a_socket_closes() -> None:
    memory = MemoryStream([b"abc", b"defg"])
    with anyio.fail_after(TIMEOUT):
        await anyecho.echo(reset_after(memory, 3))
    assert memory.sent == [b"abc"]
    assert memory.closed
    assert not memory.eof


async def test_stall_after_reads_no_further() -> None:
    memory = MemoryStream([b"abc", b"defg", b"hij"])
    with anyio.fail_after(TIMEOUT), anyio.move_on_after(0.1) as window:
        await anyecho.echo(stall_after(memory, 5))
    assert window.cancelled_caught
    assert memory.sent == [b"abc", b"de"]
    assert memory.unread == [b"fg", b"hij"]
    assert not memory.eof


async def test_wrappers_forward_extra_attributes() -> None:
    memory = MemoryStream()
    stream = stall_after(delay(fragment(throttle(memory, 1.0), 2), 0.1), 1)
    assert stream.extra_attributes == {}
    await stream.aclose()
    assert memory.closed


async def test_random_delays_are_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(anyio, "sleep", sleep)

    async def draw(seed: int) -> list[float]:
        waits.clear()
        wrap = Faults(delay=(0.1, 0.2), seed=seed).stream_wrapper()
        assert wrap is not None
        for _ in range(3):
            await anyecho.echo(wrap(MemoryStream([b"a", b"b"])))
        return list(waits)

    with anyio.fail_after(TIMEOUT):
        first, again, other = await draw(7), await draw(7), await draw(8)
    assert len(first) == 6
    assert all(0.1 <= wait <= 0.2 for wait in first)
    assert first == again
    assert first != other


# --- Faults -----------------------------------------------------------------------


def faulted(faults: Faults, count: int) -> list[bool]:
    wrap = faults.stream_wrapper()
    assert wrap is not None
    streams = [MemoryStream() for _ in range(count)]
    return [wrap(stream) is not stream for stream in streams]


def test_fraction_is_reproducible_with_a_seed() -> None:
    faults = Faults(delay=0.1, fraction=0.3, seed=42)
    pattern = faulted(faults, 400)
    assert faulted(faults, 400) == pattern  # each wrapper starts from the seed
    assert faulted(Faults(delay=0.1, fraction=0.3, seed=42), 400) == pattern
    assert faulted(Faults(delay=0.1, fraction=0.3, seed=43), 400) != pattern
    assert 80 <= sum(pattern) <= 160  # 30% of 400, give or take
    assert all(faulted(Faults(delay=0.1, seed=1), 50))


def test_no_fault_costs_nothing() -> None:
    assert Faults().stream_wrapper() is None
    assert Faults(fraction=0.5, seed=1).stream_wrapper() is None
    assert Faults(delay=1.0, fraction=0).stream_wrapper() is None
    assert not Faults(seed=3).active
    assert Faults(stall_after=0).active


def test_values_are_normalised() -> None:
    assert Faults(delay=1).delay == 1.0
    assert Faults(delay=[0.1, 0.2]).delay == (0.1, 0.2)  # type: ignore[arg-type]
    assert Faults(delay=(0, 0)).delay == (0.0, 0.0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"delay": -1}, "delay"),
        ({"delay": (0.2, 0.1)}, "min is above max"),
        ({"delay": (0.1, 0.2, 0.3)}, "delay"),
        ({"delay": float("nan")}, "delay"),
        ({"delay": "1"}, "delay"),
        ({"fragment": 0}, "fragment"),
        ({"fragment": 1.5}, "fragment"),
        ({"fragment_pause": 0.1}, "needs fragment"),
        ({"fragment": 4, "fragment_pause": -1}, "fragment_pause"),
        ({"throttle": 0}, "throttle"),
        ({"throttle": float("inf")}, "throttle"),
        ({"throttle_burst": 10}, "needs throttle"),
        ({"throttle": 10, "throttle_burst": 0}, "throttle_burst"),
        ({"close_after": -1}, "close_after"),
        ({"reset_after": True}, "reset_after"),
        ({"stall_after": 1.0}, "stall_after"),
        ({"close_after": 1, "reset_after": 2}, "cannot be combined"),
        ({"fraction": 1.5}, "fraction"),
        ({"fraction": -0.1}, "fraction"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_invalid_values(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        Faults(**options)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: delay(s, -1),
        lambda s: fragment(s, 0),
        lambda s: fragment(s, 1, pause=-1),
        lambda s: throttle(s, 0),
        lambda s: throttle(s, 10, burst=0),
        lambda s: close_after(s, -1),
        lambda s: reset_after(s, -1),
        lambda s: stall_after(s, -1),
    ],
)
def test_wrapper_arguments_are_checked(make: Callable[[ByteStream], object]) -> None:
    with pytest.raises(ValueError, match="invalid"):
        make(MemoryStream())


def test_describe() -> None:
    faults = Faults(
        delay=(0.01, 0.1),
        fragment=16,
        fragment_pause=0.5,
        throttle=1000,
        reset_after=10,
        fraction=0.25,
        seed=9,
    )
    assert faults.describe() == (
        "delay 0.01-0.1s, fragment 16 B every 0.5s, throttle 1000 B/s (burst 100 B), "
        "reset after 10 B; 25% of connections, seed 9"
    )
    assert Faults(delay=0.05).describe() == "delay 0.05s; all connections"
    assert Faults().describe() == "no faults; all connections"


def test_default_burst() -> None:
    assert default_burst(0.5) == 1
    assert default_burst(1000) == 100
    assert default_burst(1e12) == 65536


# --- command line -----------------------------------------------------------------


class ParserError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ParserError(message)


def parse(*argv: str) -> argparse.Namespace:
    parser = Parser(prog="anyecho serve")
    add_fault_arguments(parser)
    return parser.parse_args(argv)


def test_no_fault_options_means_no_faults() -> None:
    assert faults_from_args(parse()) is None
    assert faults_from_args(parse("--seed", "3", "--fault-fraction", "0.5")) is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--delay", "0.05"], Faults(delay=0.05)),
        (["--delay", "0.01-0.1"], Faults(delay=(0.01, 0.1))),
        (["--delay", " .5 - 1 "], Faults(delay=(0.5, 1.0))),
        (["--fragment", "16"], Faults(fragment=16)),
        (["--fragment", "1:0.01"], Faults(fragment=1, fragment_pause=0.01)),
        (["--throttle", "500"], Faults(throttle=500)),
        (["--throttle", "64k"], Faults(throttle=65536)),
        (["--throttle", "1.5M"], Faults(throttle=1.5 * 1024 * 1024)),
        (["--close-after", "0"], Faults(close_after=0)),
        (["--reset-after", "4K"], Faults(reset_after=4096)),
        (["--stall-after", "100"], Faults(stall_after=100)),
        (["--delay", "50ms"], Faults(delay=0.05)),
        (["--delay", "10ms-2s"], Faults(delay=(0.01, 2.0))),
        (["--fragment", "1:10ms"], Faults(fragment=1, fragment_pause=0.01)),
        (
            ["--delay", "50ms", "--jitter", "10ms", "--jitter-distribution", "pareto"],
            Faults(delay=0.05, jitter=0.01, jitter_distribution="pareto"),
        ),
        (["--jitter", "1m"], Faults(jitter=60.0)),
        (["--read-delay", "0.1"], Faults(read_delay=0.1)),
        (["--read-throttle", "1k"], Faults(read_throttle=1024)),
        (["--reset-after-seconds", "2s"], Faults(reset_after_seconds=2.0)),
        (
            ["--close-after-seconds", "500ms", "--after-first-byte"],
            Faults(close_after_seconds=0.5, after_first_byte=True),
        ),
        (
            ["--stall-after-seconds", "0", "--reset-after", "1k"],
            Faults(stall_after_seconds=0.0, reset_after=1024),
        ),
        (["--refuse"], Faults(refuse=True)),
        (["--blackhole"], Faults(blackhole=True)),
        (["--slow-close", "1.5"], Faults(slow_close=1.5)),
        (["--pause-accepting"], Faults(pause_accepting=True)),
        (
            ["--delay", "1", "--fault-fraction", "0.5", "--seed", "-4"],
            Faults(delay=1.0, fraction=0.5, seed=-4),
        ),
    ],
)
def test_fault_options(argv: list[str], expected: Faults) -> None:
    assert faults_from_args(parse(*argv)) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--delay", "x"], "argument --delay: invalid delay 'x': expected SECONDS"),
        (["--delay", "-1"], "invalid delay '-1'"),
        (["--delay", "0.2-0.1"], "MIN is above MAX"),
        (["--fragment", "0"], "invalid fragment '0'"),
        (["--fragment", "4:x"], "invalid fragment '4:x'"),
        (["--throttle", "0"], "invalid rate '0'"),
        (["--throttle", "fast"], "invalid rate 'fast'"),
        (["--throttle", "1T"], "invalid rate '1T'"),
        (["--close-after", "1.5"], "invalid byte count '1.5'"),
        (["--reset-after", "-1"], "invalid byte count '-1'"),
        (["--stall-after", "x"], "invalid byte count 'x'"),
        (["--fault-fraction", "2"], "invalid fraction '2': expected a number"),
        (["--fault-fraction", "nan"], "invalid fraction 'nan'"),
        (["--seed", "1.5"], "invalid seed '1.5': expected an integer"),
        (
            ["--close-after", "1", "--reset-after", "2"],
            "argument --reset-after: not allowed with argument --close-after",
        ),
        (["--delay", "5h"], "invalid delay '5h'"),
        (["--jitter", "1 day"], "invalid value '1 day': expected seconds, or a number"),
        (["--jitter-distribution", "cauchy"], "invalid choice: 'cauchy'"),
        (["--read-throttle", "0"], "invalid rate '0'"),
        (
            ["--reset-after-seconds", "1", "--close-after-seconds", "2"],
            "not allowed with argument --reset-after-seconds",
        ),
        (["--refuse", "--blackhole"], "not allowed with argument --refuse"),
    ],
)
def test_bad_fault_options(argv: list[str], message: str) -> None:
    with pytest.raises(ParserError) as caught:
        parse(*argv)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jitter-distribution", "normal"], "--jitter-distribution needs --jitter"),
        (["--after-first-byte"], "--after-first-byte needs a --*-after-seconds"),
    ],
)
def test_fault_options_that_need_another(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", "[*]")):
        faults_from_args(parse(*argv))


def test_help_lists_the_fault_options() -> None:
    parser = argparse.ArgumentParser()
    add_fault_arguments(parser)
    text = parser.format_help()
    assert "fault injection" in text
    for field in dataclasses.fields(Faults):
        if field.name in {"fraction", "seed"}:
            continue
        option = "--" + field.name.replace("_", "-")
        if field.name.endswith("_burst"):
            continue  # the bursts default to 0.1 s worth
        if field.name == "fragment_pause":
            option = "--fragment"
        assert option in text, option
    assert "--fault-fraction" in text
