"""``python -m anyecho.bench.cpu``: its exact-count client, its table, its errors."""

from __future__ import annotations

import socket
import subprocess
import sys

import anyio
import pytest

from anyecho.bench import cpu
from anyecho.testing import serving

from .utils import TIMEOUT


@pytest.mark.anyio
async def test_the_instruction_client_runs_exactly_the_echoes_asked_for() -> None:
    async with serving(max_connections_per_source=None) as server:

        def drive() -> None:
            conns = [
                socket.create_connection((server.host, server.port)) for _ in "abc"
            ]
            try:
                cpu._drive(conns, 100, 31)
            finally:
                for sock in conns:
                    sock.close()

        with anyio.fail_after(TIMEOUT):
            await anyio.to_thread.run_sync(drive)
            stats = await server.wait_stats(
                lambda s: s.total_connections == 3 and s.active_connections == 0
            )
        assert stats.bytes_received == stats.bytes_sent == 31 * 100


def test_the_table_gives_medians() -> None:
    table = {
        "a": {"64 B x 1": [{"cpu": 3.0}, {"cpu": 1.0}, {"cpu": 2.0}]},
        "b": {"64 B x 1": [{"cpu": 5.0}]},
    }
    assert cpu._markdown(table, ["64 B x 1"], "cpu", "CPU µs per echo", 2).split(
        "\n"
    ) == [
        "| server (CPU µs per echo) | 64 B x 1 |",
        "|---|---|",
        "| a | 2.00 |",
        "| b | 5.00 |",
        "",
    ]


def test_callgrind_totals_are_read_by_event_name() -> None:
    dump = "version: 1\nevents: Ir D1mr DLmr\nfn=(1) f\n1 5 1 0\nsummary: 900 40 7\n"
    assert cpu._counts(dump) == {"Ir": 900, "D1mr": 40, "DLmr": 7}
    # callgrind leaves trailing zeros out
    zeros = "events: Ir D1mr DLmr DLmw\nsummary: 900 40\n"
    assert cpu._counts(zeros) == {"Ir": 900, "D1mr": 40, "DLmr": 0, "DLmw": 0}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["instr", "--servers", "nginx"], "unknown servers: nginx"),
        (["cpu", "--echoload", "/nonexistent/echoload"], "not found"),
        (["instr", "--sizes", "64x"], "invalid size '64x'"),
        (["instr", "--cache-sim", "--ll", "big"], "invalid size 'big'"),
    ],
)
def test_bad_options_are_one_line_errors(args: list[str], error: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anyecho.bench.cpu", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert error in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
