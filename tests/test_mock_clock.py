"""Fault delays follow AnyIO's clock: under Trio's ``MockClock`` with
``autojump_threshold=0`` a ten-second latency fault takes no real time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from anyecho import Faults
from anyecho.testing import serving

from .utils import round_trip

pytest.importorskip("trio")

from trio.testing import MockClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


async def test_a_ten_second_delay_takes_no_real_time() -> None:
    import anyio

    async with serving(faults=Faults(delay=10)) as server:
        async with await server.connect() as client:
            started, real = anyio.current_time(), time.monotonic()
            await round_trip(client)
            assert anyio.current_time() - started >= 10
    # Ten seconds of the loop's clock, in a blink of the wall clock.
    assert time.monotonic() - real < 10
    assert server.stats.faults_injected["delay"] == 1


async def test_jitter_draws_follow_the_seed_in_loop_time() -> None:
    import anyio

    async def delays(seed: int) -> list[float]:
        faults = Faults(delay=1, jitter=0.5, jitter_distribution="pareto", seed=seed)
        measured: list[float] = []
        async with serving(faults=faults) as server:
            async with await server.connect() as client:
                for _ in range(5):
                    started = anyio.current_time()
                    await round_trip(client)
                    measured.append(round(anyio.current_time() - started, 6))
        return measured

    first = await delays(3)
    assert await delays(3) == first
    assert await delays(4) != first
    assert all(delay >= 1 for delay in first)  # pareto jitter only adds


async def test_a_time_cutoff_on_the_mock_clock() -> None:
    import anyio

    faults = Faults(reset_after_seconds=3600)
    # No idle timeout: it would close the silent connection first.
    async with serving(faults=faults, idle_timeout=None) as server:
        async with await server.connect() as client:
            started = anyio.current_time()
            with pytest.raises(anyio.BrokenResourceError):
                await client.receive()
            assert anyio.current_time() - started >= 3600
