"""``python -m anyecho.bench.newcomers``: one tiny run, its table and its JSON.

Only the structure is checked, and that every newcomer got its exact echo: the
figures themselves depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from anyecho.bench.newcomers import MESSAGE_SIZE, SCHEMA, message_for, percentile

NEWCOMERS = 3
STREAMS = 2
FIGURES = ("p50_s", "p90_s", "max_s", "all_s", "accepts_per_s")


def newcomers_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anyecho.bench.newcomers", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    json_path = tmp_path_factory.mktemp("newcomers") / "newcomers.json"
    process = newcomers_bench(
        "--backend",
        "asyncio",
        "--streams",
        str(STREAMS),
        "--newcomers",
        str(NEWCOMERS),
        "--repeat",
        "1",
        "--window",
        "64k",
        "--settle",
        "0.1",
        "--json",
        str(json_path),
    )
    assert json_path.exists(), process.stderr
    return process, json.loads(json_path.read_text())


def test_every_newcomer_gets_its_exact_echo(
    tiny_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    process, document = tiny_run
    assert process.returncode == 0, process.stdout + process.stderr
    assert document["schema"] == SCHEMA
    [entry] = document["backends"]
    assert entry["backend"] == "asyncio"
    assert entry["error"] is None
    [round_] = entry["rounds"]
    for name in ("idle", "loaded"):
        phase = round_[name]
        assert phase["newcomers"] == phase["echoed"] == NEWCOMERS
        assert phase["timeouts"] == phase["failures"] == 0
        assert phase["errors"] == []
        assert len(phase["latencies_s"]) == NEWCOMERS
        assert all(latency > 0 for latency in phase["latencies_s"])
        assert all(isinstance(phase[key], float) for key in FIGURES)


def test_the_load_flowed_and_was_measured(
    tiny_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, document = tiny_run
    assert document["settings"]["streams"] == STREAMS
    assert document["settings"]["message_size"] == MESSAGE_SIZE
    assert "description" in document["placement"]
    [entry] = document["backends"]
    load = entry["rounds"][0]["load"]
    assert load["flowing_ok"] is True
    assert load["errors"] == []
    assert load["stream_mib_per_s"] > 0
    summary = entry["summary"]
    assert set(summary) >= {"idle", "loaded", "ratio_all", "ratio_p50", "load_cpu"}
    assert all(key in summary["loaded"] for key in FIGURES)


def test_table_has_a_row_per_backend(
    tiny_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    process, document = tiny_run
    lines = process.stdout.splitlines()
    header = next(line for line in lines if line.startswith("backend"))
    for column in ("idle p50", "loaded p50", "ratio all", "accepts/s loaded"):
        assert column in header
    assert any(line.startswith("asyncio ") for line in lines)
    assert document["placement"]["description"] in process.stdout


def test_bad_command_line_is_refused() -> None:
    process = newcomers_bench("--newcomers", "0")
    assert process.returncode == 2
    assert "--newcomers" in process.stderr


def test_messages_are_distinct_and_of_fixed_size() -> None:
    messages = {message_for(index) for index in range(1000)}
    assert len(messages) == 1000
    assert {len(message) for message in messages} == {MESSAGE_SIZE}


def test_percentile_is_nearest_rank() -> None:
    values = [float(value) for value in range(1, 11)]
    assert percentile(values, 0.5) == 5.0
    assert percentile(values, 0.9) == 9.0
    assert percentile(values, 1.0) == 10.0
    assert percentile([], 0.5) is None
