"""UDP impairments, seen by a real client over loopback, on every backend.

Each test sends numbered datagrams from a plain socket and judges what comes
back: how many never do (within a binomial bound of the configured share), which
come twice, which come out of order, which come changed. The seeds are fixed, so
every run draws the same impairments; the tests wait on exact counts
(``wait_stats``), never on elapsed time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import random
import re
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from anyecho import EchoServer, ServerConfig, StatsSnapshot
from anyecho._stats import ServerStats
from anyecho._udp import UDPFaultState, UDPGuard, _Responder
from anyecho.faults import Faults, UdpFaults, add_fault_arguments, faults_from_args
from anyecho.testing import RunningServer, serving

from .processes import ServerProcess, one_line_error
from .test_udp import UNLIMITED, client, receive
from .utils import TIMEOUT

HAS_TRIO = importlib.util.find_spec("trio") is not None

pytestmark = pytest.mark.anyio

#: Datagrams per statistical test, and how many are in flight at once.
COUNT = 2000
WINDOW = 50

#: How far an observed count may stray from the expected one, in standard
#: deviations of the binomial distribution. The seeds are fixed, so the figures
#: are the same on every run; the bound says the draws follow the configured share.
SIGMAS = 5


def within_binomial(observed: int, trials: int, share: float) -> bool:
    expected = trials * share
    sigma = math.sqrt(trials * share * (1 - share))
    return abs(observed - expected) <= SIGMAS * sigma


def payload(seq: int) -> bytes:
    """Datagram ``seq``: its number, then filler that depends on it (32 bytes)."""
    return b"%08d:" % seq + random.Random(seq).randbytes(23)


def seq_of(data: bytes) -> int:
    return int(data[:8])


@asynccontextmanager
async def udp_server(faults: UdpFaults) -> AsyncIterator[RunningServer]:
    async with serving(
        udp=True, udp_rate=UNLIMITED, udp_byte_rate=UNLIMITED, udp_faults=faults
    ) as server:
        yield server


def accounted(snapshot: StatsSnapshot) -> int:
    """Datagrams the server has received: answered, dropped or held."""
    return (
        snapshot.datagrams_echoed + snapshot.datagrams_dropped + snapshot.datagrams_held
    )


@dataclass
class Run:
    answers: list[bytes]
    stats: StatsSnapshot

    @property
    def seqs(self) -> list[int]:
        return [seq_of(data) for data in self.answers]


async def send_and_collect(
    server: RunningServer,
    count: int = COUNT,
    *,
    before_end: Any = None,
) -> Run:
    """Send datagrams 0 to ``count - 1``, ``WINDOW`` at a time, and read every
    answer the server sends (its stats say how many: echoed plus duplicates)."""
    port = server.address_for("udp").port
    answers: list[bytes] = []
    arrived = anyio.Event()

    with client() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

        async def read() -> None:
            nonlocal arrived
            while True:
                answers.append((await receive(sock))[0])
                arrived.set()
                arrived = anyio.Event()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            for start in range(0, count, WINDOW):
                sent = min(start + WINDOW, count)
                for seq in range(start, sent):
                    sock.sendto(payload(seq), ("127.0.0.1", port))

                def taken(snapshot: StatsSnapshot, sent: int = sent) -> bool:
                    return accounted(snapshot) >= sent

                await server.wait_stats(taken)
            if before_end is not None:
                before_end()
                # One more, unimpaired, lets out what waits for a later datagram.
                sock.sendto(payload(count), ("127.0.0.1", port))
                count += 1
            stats = await server.wait_stats(
                lambda s: s.datagrams_echoed + s.datagrams_dropped == count
            )
            due = stats.datagrams_echoed + stats.udp_faults_injected["duplicate"]
            while len(answers) < due:
                await arrived.wait()
            tg.cancel_scope.cancel()
    assert len(answers) == due
    return Run(answers, stats)


# --- what the client sees, backend by backend -----------------------------------


async def test_loss_rate_is_the_configured_share() -> None:
    with anyio.fail_after(TIMEOUT):
        async with udp_server(UdpFaults(drop=0.1, seed=1)) as server:
            run = await send_and_collect(server)
    lost = COUNT - len(set(run.seqs))
    assert run.seqs == sorted(set(run.seqs))  # nothing else happened to them
    assert within_binomial(lost, COUNT, 0.1), f"{lost} of {COUNT} lost"
    assert 0 < lost < COUNT
    assert run.stats.udp_faults_injected["drop"] == lost
    assert run.stats.datagrams_dropped_by_reason["fault"] == lost
    assert run.stats.datagrams_echoed == COUNT - lost
    summary = run.stats.summary()
    assert f"fault {lost}" in summary
    assert f"udp faults: drop {lost}" in summary


async def test_duplicates_arrive_twice_in_a_row() -> None:
    with anyio.fail_after(TIMEOUT):
        async with udp_server(UdpFaults(duplicate=0.2, seed=2)) as server:
            run = await send_and_collect(server)
    copies = Counter(run.seqs)
    twice = [seq for seq, n in copies.items() if n == 2]
    assert set(copies) == set(range(COUNT))
    assert max(copies.values()) == 2
    assert within_binomial(len(twice), COUNT, 0.2)
    assert run.stats.udp_faults_injected["duplicate"] == len(twice)
    assert run.stats.datagrams_echoed == COUNT
    # A duplicate follows its original at once.
    for seq in twice:
        first = run.seqs.index(seq)
        assert run.seqs[first + 1] == seq
    assert run.stats.bytes_sent == run.stats.bytes_received + 32 * len(twice)


async def test_reordered_datagrams_come_after_a_later_one() -> None:
    faults = UdpFaults(reorder=0.1, reorder_hold=30, seed=3)
    with anyio.fail_after(TIMEOUT):
        async with udp_server(faults) as server:
            run = await send_and_collect(
                server, before_end=lambda: server.set_udp_faults(None)
            )
    seqs = run.seqs
    assert sorted(seqs) == list(range(COUNT + 1))  # none lost, none twice
    behind: list[int] = []  # what arrived after a datagram sent later
    highest = -1
    for seq in seqs:
        if seq < highest:
            behind.append(seq)
            assert highest - seq <= 10  # overtaken by the next few only
        highest = max(highest, seq)
    assert within_binomial(len(behind), COUNT, 0.1), f"{len(behind)} reordered"
    assert run.stats.udp_faults_injected["reorder"] == len(behind)
    assert run.stats.datagrams_held == 0


async def test_corrupted_answers_keep_their_length() -> None:
    with anyio.fail_after(TIMEOUT):
        async with udp_server(UdpFaults(corrupt=0.05, seed=4)) as server:
            run = await send_and_collect(server)
    assert len(run.answers) == COUNT
    changed = [seq for seq, data in enumerate(run.answers) if data != payload(seq)]
    assert all(len(data) == 32 for data in run.answers)
    for seq in changed:
        diff = [a != b for a, b in zip(run.answers[seq], payload(seq), strict=True)]
        assert sum(diff) == 1  # one byte, changed
    assert within_binomial(len(changed), COUNT, 0.05)
    assert run.stats.udp_faults_injected["corrupt"] == len(changed)


async def test_delays_let_later_datagrams_overtake_and_lose_none() -> None:
    faults = UdpFaults(delay=(0.0, 0.05), seed=5)
    with anyio.fail_after(TIMEOUT):
        async with udp_server(faults) as server:
            run = await send_and_collect(server, 500)
    assert sorted(run.seqs) == list(range(500))
    assert run.seqs != sorted(run.seqs)
    assert run.stats.udp_faults_injected["delay"] == 500
    assert run.stats.datagrams_held == 0


async def test_same_seed_same_impairments() -> None:
    faults = UdpFaults(
        drop=0.1, duplicate=0.05, reorder=0.1, reorder_hold=30, corrupt=0.02, seed=9
    )
    runs: list[Run] = []
    for _ in range(2):
        with anyio.fail_after(TIMEOUT):
            async with udp_server(faults) as server:
                runs.append(
                    await send_and_collect(
                        server,
                        500,
                        before_end=lambda: server.set_udp_faults(None),
                    )
                )
    first, second = runs
    assert first.answers == second.answers
    assert first.stats.udp_faults_injected == second.stats.udp_faults_injected
    assert set(first.stats.udp_faults_injected) == {
        "drop",
        "duplicate",
        "reorder",
        "corrupt",
    }


async def test_faults_change_while_serving() -> None:
    with anyio.fail_after(TIMEOUT):
        async with udp_server(UdpFaults()) as server:
            assert not server.config.udp_faults.active  # type: ignore[union-attr]
            first = await send_and_collect(server, 100)
            assert len(first.answers) == 100
            server.set_udp_faults(UdpFaults(drop=1.0))
            assert server.server.udp_faults == UdpFaults(drop=1.0)
            port = server.address_for("udp").port
            with client() as sock:
                sock.sendto(b"lost", ("127.0.0.1", port))
                await server.wait_stats(lambda s: s.datagrams_dropped == 1)
                server.set_udp_faults({"drop": 0.0})
                sock.sendto(b"back", ("127.0.0.1", port))
                assert (await receive(sock))[0] == b"back"
    assert server.stats.udp_faults_injected == {"drop": 1}


async def test_a_reorder_nothing_overtakes_goes_out_alone() -> None:
    faults = UdpFaults(reorder=1.0, reorder_hold=0.05)
    with anyio.fail_after(TIMEOUT):
        async with udp_server(faults) as server:
            port = server.address_for("udp").port
            with client() as sock:
                sock.sendto(b"alone", ("127.0.0.1", port))
                assert (await receive(sock))[0] == b"alone"
            stats = await server.wait_stats(lambda s: s.datagrams_echoed == 1)
    # Held back, but never overtaken: only late, so counted as a delay.
    assert stats.udp_faults_injected == {"delay": 1}
    assert stats.datagrams_held == 0


async def test_held_datagrams_past_the_cap_are_dropped_and_counted() -> None:
    faults = UdpFaults(delay=30, max_held=10, seed=6)
    with anyio.fail_after(TIMEOUT):
        async with udp_server(faults) as server:
            port = server.address_for("udp").port
            with client() as sock:
                for seq in range(25):
                    sock.sendto(payload(seq), ("127.0.0.1", port))
                stats = await server.wait_stats(lambda s: accounted(s) == 25)
            server.server.stop(0)
    assert stats.datagrams_held == 10
    assert stats.datagrams_dropped_by_reason["hold-full"] == 15
    # Those still held when the server stops are counted too.
    final = server.stats
    assert final.datagrams_dropped_by_reason["stopped"] == 10
    assert final.datagrams_held == 0
    assert final.datagrams_dropped == 25


async def test_faults_udp_through_serving_and_json_names() -> None:
    with anyio.fail_after(TIMEOUT):
        faults = Faults(udp={"drop": 1.0, "seed": 3})  # type: ignore[arg-type]
        async with serving(
            udp=True, udp_rate=UNLIMITED, udp_byte_rate=UNLIMITED, faults=faults
        ) as server:
            assert server.config.udp_faults == UdpFaults(drop=1.0, seed=3)
            port = server.address_for("udp").port
            with client() as sock:
                sock.sendto(b"x", ("127.0.0.1", port))
                await server.wait_stats(lambda s: s.udp_faults_injected["drop"] == 1)


# --- on Trio's mock clock: a long delay, instantly ---------------------------------


def mock_clock() -> object:
    """A Trio clock that jumps to the next timer whenever every task waits."""
    if not HAS_TRIO:  # pragma: no cover
        return None
    from trio.testing import MockClock

    return MockClock(autojump_threshold=0)


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(
            ("trio", {"clock": mock_clock()}),
            id="trio-mock-clock",
            marks=pytest.mark.skipif(not HAS_TRIO, reason="needs trio"),
        )
    ],
)
async def test_ten_second_delay_on_a_mock_clock(anyio_backend: Any) -> None:
    # The delay goes through AnyIO's clock: Trio's MockClock jumps over it.
    start = anyio.current_time()
    async with udp_server(UdpFaults(delay=10)) as server:
        port = server.address_for("udp").port
        with client() as sock:
            sock.sendto(b"late", ("127.0.0.1", port))
            assert (await receive(sock))[0] == b"late"
    assert anyio.current_time() - start >= 10


# --- decisions and settings, without sockets -----------------------------------


def test_fates_follow_the_seed() -> None:
    faults = UdpFaults(drop=0.3, duplicate=0.3, reorder=0.3, corrupt=0.3, seed=1)
    rng_a, rng_b = random.Random(7), random.Random(7)
    fates = [faults.decide(rng_a, n) for n in range(300)]
    assert fates == [faults.decide(rng_b, n) for n in range(300)]
    assert len(set(fates)) > 100
    # Every datagram costs the same draws: what happens to one does not shift
    # the fate of the next.
    rng_a, rng_b = random.Random(7), random.Random(7)
    faults.decide(rng_a, 0)
    UdpFaults(drop=1.0).decide(rng_b, 10)
    assert rng_a.random() == rng_b.random()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"drop": 1.5}, "invalid UDP drop 1.5: expected a share from 0 to 1"),
        ({"duplicate": -0.1}, "invalid UDP duplicate"),
        ({"reorder": math.nan}, "invalid UDP reorder"),
        ({"corrupt": True}, "invalid UDP corrupt"),
        ({"delay": -1}, "invalid UDP delay -1: expected seconds >= 0"),
        ({"delay": [0.2, 0.1]}, "min is above max"),
        ({"delay": [1, 2, 3]}, r"expected seconds or \(min, max\)"),
        ({"delay": math.inf}, "invalid UDP delay"),
        ({"reorder_hold": -1}, "invalid UDP reorder_hold"),
        ({"max_held": 0}, "invalid UDP max_held 0"),
        ({"seed": "1"}, "invalid UDP seed"),
    ],
)
def test_invalid_udp_faults(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        UdpFaults(**options)
    assert "\n" not in str(info.value)


def test_from_json() -> None:
    faults = UdpFaults.from_json({"drop": 0.1, "delay": [0.01, 0.02], "seed": 1})
    assert faults == UdpFaults(drop=0.1, delay=(0.01, 0.02), seed=1)
    with pytest.raises(ValueError, match=r"unknown UDP fault field.*loss"):
        UdpFaults.from_json({"loss": 0.1})
    with pytest.raises(ValueError, match="invalid udp faults"):
        UdpFaults.from_json([0.1])
    with pytest.raises(ValueError, match="unknown UDP fault field"):
        Faults(udp={"bogus": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown UDP fault field"):
        ServerConfig(udp_faults={"bogus": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid UDP drop"):
        EchoServer(port=0).set_udp_faults({"drop": 2})


def test_active_and_describe() -> None:
    assert not UdpFaults().active
    assert not UdpFaults(delay=0.5, delay_fraction=0).active
    assert UdpFaults(delay=(0, 0.1)).active
    text = UdpFaults(drop=0.1, delay=(0.01, 0.05), delay_fraction=0.5, seed=2)
    assert text.describe() == "drop 0.1, delay 0.01-0.05s of 0.5 (seed 2)"
    both = Faults(delay=0.1, udp=UdpFaults(drop=0.1))
    assert both.describe() == "delay 0.1s; all connections; udp: drop 0.1"
    assert Faults(udp=UdpFaults(drop=0.1)).describe() == "udp: drop 0.1"


def test_command_line_options() -> None:
    parser = argparse.ArgumentParser()
    add_fault_arguments(parser)
    args = parser.parse_args(
        [
            "--udp-drop",
            "0.1",
            "--udp-duplicate",
            ".05",
            "--udp-reorder",
            "0.1",
            "--udp-reorder-hold",
            "0.5",
            "--udp-corrupt",
            "0.01",
            "--udp-delay",
            "0.01-0.02",
            "--udp-delay-fraction",
            "0.5",
            "--udp-max-held",
            "50",
            "--udp-seed",
            "1",
        ]
    )
    faults = faults_from_args(args)
    assert faults is not None
    assert not faults.active
    assert faults.udp == UdpFaults(
        drop=0.1,
        duplicate=0.05,
        reorder=0.1,
        reorder_hold=0.5,
        corrupt=0.01,
        delay=(0.01, 0.02),
        delay_fraction=0.5,
        max_held=50,
        seed=1,
    )
    assert faults_from_args(parser.parse_args(["--udp-seed", "1"])) is None


# --- from the command line -------------------------------------------------------


def test_serve_impairs_datagrams_and_logs_them(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = run(
        "serve",
        "--port",
        "0",
        "--backend",
        backend_name,
        "--udp",
        "--udp-rate",
        "100000",
        "--udp-drop",
        "0.5",
        "--udp-duplicate",
        "0.5",
        "--udp-seed",
        "1",
        "--stats-interval",
        "0.05",
    )
    server.wait_for(r"injecting faults: .*udp: drop 0\.5, duplicate 0\.5 \(seed 1\)")
    port = server.wait_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for seq in range(40):
            sock.sendto(payload(seq), ("127.0.0.1", port))
        # The server's own count says when it has dealt with all 40.
        while True:
            line = server.wait_for(r"datagrams (\d+) echoed / (\d+) dropped")
            if int(line[1]) + int(line[2]) == 40:
                break
        server.proc.send_signal(signal.SIGTERM)
        status, stderr = server.finish()
        sock.setblocking(False)
        answers: list[bytes] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                answers.append(sock.recv(100))
    assert status == 0, stderr
    copies = Counter(seq_of(data) for data in answers)
    assert 0 < len(copies) < 40
    assert 2 in copies.values()
    lost = 40 - len(copies)
    twice = sum(1 for n in copies.values() if n == 2)
    assert f"udp faults: drop {lost}, duplicate {twice}" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--udp-drop", "0.1"], "the --udp-\\* impairments need --udp"),
        (["--udp", "--udp-drop", "2"], "invalid fraction '2'"),
        (["--udp", "--udp-delay", "0.2-0.1"], "MIN is above MAX"),
        (["--udp", "--udp-max-held", "0"], "invalid count '0'"),
    ],
)
def test_serve_rejects_bad_udp_impairments(args: list[str], message: str) -> None:
    status, line = one_line_error("serve", "--port", "0", *args)
    assert status == 2
    assert re.search(message, line), line


# --- the responder on its own: memory stays bounded ------------------------------


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: Any, address: Any) -> int:
        self.sent.append(bytes(data))
        return len(data)


def test_overtaken_reorders_leave_no_pile_of_deadlines() -> None:
    # Every other datagram is held for a long reorder and overtaken at once by
    # the next: their deadlines, still queued, must not pile up.
    stats = ServerStats()
    guard = UDPGuard(blocked_ports=frozenset(), packets=UNLIMITED, data=UNLIMITED)
    state = UDPFaultState(UdpFaults(reorder=0.5, reorder_hold=3600, seed=1))
    sock = RecordingSocket()
    responder = _Responder(sock, guard, stats, lambda: 0.0, faults=state)
    for seq in range(20_000):
        responder.answer(payload(seq), ("127.0.0.1", 40000))
    assert len(responder._due) < 200  # of some 10,000 reorders
    assert stats.datagrams_held <= 20
    assert len(sock.sent) + stats.datagrams_held == 20_000
    assert stats.udp_faults_injected["reorder"] > 5000
