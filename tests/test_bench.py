"""``anyecho bench``: its schedule, its JSON report, failures, and its command line.

One short benchmark runs as a subprocess, as a user would run it, and most tests
read what it wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import pytest

from anyecho._args import format_size, parse_size
from anyecho.bench import cli, render
from anyecho.bench.histogram import Histogram
from anyecho.bench.plan import PlannedRun, Settings, Workload, schedule
from anyecho.bench.report import SCHEMA, Measurement, run_record
from anyecho.bench.report import results as report_results
from anyecho.bench.runner import split_connections
from anyecho.bench.servers import STALL

SERVERS = ("anyecho-asyncio", "tutorial", "broken", "broken-die")
FAULTY = {"broken", "broken-die"}
SETTINGS = Settings(servers=SERVERS, sizes=(64, 4096), connections=(1, 3), repeat=2)
RUN_ARGS = [
    "--servers",
    ",".join(SERVERS),
    "--sizes",
    "64,4k",
    "--connections",
    "1,3",
    "--duration",
    "0.3",
    "--warmup",
    "0.1",
    "--repeat",
    "2",
]


def anyecho_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anyecho", "bench", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@dataclass
class BenchRun:
    process: subprocess.CompletedProcess[str]
    report: dict[str, Any]
    json_path: Path


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    json_path = tmp_path_factory.mktemp("bench") / "report.json"
    process = anyecho_bench(*RUN_ARGS, "--json", str(json_path), "--markdown")
    assert json_path.exists(), process.stderr
    return BenchRun(process, json.loads(json_path.read_text()), json_path)


# -- the schedule ---------------------------------------------------------------


def test_schedule_interleaves_servers_within_each_round() -> None:
    small, large = Workload(64, 1), Workload(1 << 20, 50)
    runs = schedule(["a", "b", "c"], [small, large], repeat=2)
    assert [run.index for run in runs] == list(range(12))
    assert [run.server for run in runs] == list("abc" * 4)
    assert [run.round for run in runs] == [0] * 3 + [1] * 3 + [0] * 3 + [1] * 3
    assert [run.workload for run in runs] == [small] * 6 + [large] * 6


def test_settings_cross_every_size_with_every_connection_count() -> None:
    settings = Settings(servers=("a",), sizes=(64, 1024), connections=(1, 50))
    assert [(w.size, w.connections) for w in settings.workloads] == [
        (64, 1),
        (64, 50),
        (1024, 1),
        (1024, 50),
    ]
    assert settings.workloads[1].label == "64 B, 50 conns"


def test_connections_are_shared_among_load_generators() -> None:
    assert split_connections(1, 4) == [(0, 1)]
    assert split_connections(50, 1) == [(0, 50)]
    assert split_connections(7, 3) == [(0, 3), (3, 2), (5, 2)]


# -- units and histograms -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("64", 64), ("1k", 1024), ("64KiB", 65536), ("1m", 1 << 20), ("2 MiB", 2 << 20)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "1.5", "-1", "1t"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(n) for n in (64, 1024, 1536, 1 << 20)] == [
        "64 B",
        "1 KiB",
        "1536 B",
        "1 MiB",
    ]


def test_histogram_quantiles_are_within_one_percent() -> None:
    values = list(range(1, 200_001, 7))
    histogram = Histogram()
    histogram.add_all(values[::2])
    other = Histogram()
    other.add_all(values[1::2])
    histogram.merge(Histogram.from_json(json.loads(json.dumps(other.to_json()))))
    assert histogram.count == len(values)
    assert histogram.quantile(1) == max(values)
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert histogram.quantile(q) == pytest.approx(exact, rel=0.01)


# -- the report -----------------------------------------------------------------


class Nullable(NamedTuple):
    spec: Any


class MapOf(NamedTuple):
    spec: Any


SUMMARY = {"median": float, "min": float, "max": float}
LATENCY = {"p50": float, "p90": float, "p99": float, "p999": float, "max": float}
REPORT_SCHEMA: dict[str, Any] = {
    "schema": str,
    "created": str,
    "complete": bool,
    "machine": {
        "platform": str,
        "system": str,
        "machine": str,
        "python_implementation": str,
        "cpu_count": int,
        "cpus_usable": Nullable(int),
        "cpu_model": Nullable(str),
        "kernel": str,
    },
    "versions": MapOf(Nullable(str)),
    "settings": {
        "servers": [str],
        "baseline": Nullable(str),
        "sizes": [int],
        "connections": [int],
        "pipeline": int,
        "repeat": int,
        "duration_s": float,
        "warmup_s": float,
        "drain_timeout_s": float,
        "pin": bool,
        "server_cpus": Nullable([int]),
        "client_cpus": [Nullable([int])],
        "loadgen_loop": str,
        "mode": str,
        "rates": [float],
        "schedule": Nullable(str),
        "seed": int,
        "sweep": bool,
        "p99_limit_us": float,
        "transport": str,
    },
    "servers": [
        {
            "name": str,
            "description": str,
            "command": [str],
            "status": str,
            "reason": Nullable(str),
        }
    ],
    "workloads": [
        {
            "id": str,
            "label": str,
            "size": int,
            "connections": int,
            "pipeline": int,
            "rate": Nullable(float),
        }
    ],
    "runs": [
        {
            "index": int,
            "round": int,
            "server": str,
            "workload": str,
            "ok": bool,
            "error": Nullable(str),
            "window_s": float,
            "echoes": int,
            "echoes_per_s": float,
            "mib_per_s": float,
            "latency_us": Nullable(LATENCY),
            "server_cpu_s": Nullable(float),
            "cpu_us_per_echo": Nullable(float),
            "client_cpu_percent": [float],
            "client_saturated": bool,
            "client_cpu_us_per_echo": Nullable(float),
            "mode": str,
            "requested_rate": Nullable(float),
            "scheduled": int,
            "send_lag_us": Nullable(LATENCY),
            "held_rate": Nullable(bool),
            "loadgen_limited": bool,
            "limited_by": Nullable(str),
        }
    ],
    "results": [
        {
            "server": str,
            "workload": str,
            "ok": bool,
            "error": Nullable(str),
            "runs": int,
            "client_saturated": bool,
            "echoes_per_s": Nullable(SUMMARY),
            "mib_per_s": Nullable(SUMMARY),
            "cpu_us_per_echo": Nullable(SUMMARY),
            "latency_us": Nullable(dict.fromkeys(LATENCY, SUMMARY)),
            "client_cpu_percent": Nullable(SUMMARY),
            "client_cpu_us_per_echo": Nullable(SUMMARY),
            "requested_rate": Nullable(float),
            "send_lag_us_p99": Nullable(SUMMARY),
            "held_rate": Nullable(bool),
            "loadgen_limited": bool,
            "limited_by": Nullable(str),
            "ratio": {
                "echoes_per_s": Nullable(float),
                "cpu_us_per_echo": Nullable(float),
            },
        }
    ],
    "highest_rates": [
        {
            "server": str,
            "size": int,
            "connections": int,
            "rate": Nullable(float),
            "stopped_by": Nullable(str),
        }
    ],
    "skipped": [{"workload": str, "runs": int, "reason": str}],
    "warnings": [str],
}


def check(value: Any, spec: Any, where: str = "report") -> None:
    """Assert that ``value`` has the keys and types that ``spec`` describes."""
    if isinstance(spec, Nullable):
        if value is not None:
            check(value, spec.spec, where)
    elif isinstance(spec, MapOf):
        assert isinstance(value, dict), where
        for key, item in value.items():
            check(item, spec.spec, f"{where}.{key}")
    elif isinstance(spec, dict):
        assert isinstance(value, dict), where
        assert sorted(value) == sorted(spec), where
        for key, item_spec in spec.items():
            check(value[key], item_spec, f"{where}.{key}")
    elif isinstance(spec, list):
        assert isinstance(value, list), where
        for index, item in enumerate(value):
            check(item, spec[0], f"{where}[{index}]")
    else:
        assert isinstance(value, spec), f"{where}: {value!r} is not a {spec.__name__}"
        assert spec is bool or not isinstance(value, bool), f"{where}: {value!r}"


def test_report_follows_the_schema(bench_run: BenchRun) -> None:
    report = bench_run.report
    check(report, REPORT_SCHEMA)
    assert report["schema"] == SCHEMA
    assert report["complete"] is True
    assert report["settings"]["servers"] == list(SERVERS)
    assert report["settings"]["baseline"] == "tutorial"
    assert {"python", "anyecho", "anyio", "trio", "uvloop"} <= set(report["versions"])
    assert [s["status"] for s in report["servers"]] == ["ok"] * len(SERVERS)
    assert [w["id"] for w in report["workloads"]] == [w.id for w in SETTINGS.workloads]


def test_runs_happened_in_the_interleaved_order(bench_run: BenchRun) -> None:
    planned = schedule(SERVERS, SETTINGS.workloads, SETTINGS.repeat)
    expected = [(run.index, run.round, run.server, run.workload.id) for run in planned]
    runs = bench_run.report["runs"]
    assert [
        (r["index"], r["round"], r["server"], r["workload"]) for r in runs
    ] == expected
    # The progress lines, printed as each run ends, tell the same order.
    progress = re.findall(r"^\[(\d+)/\d+\] ([\w-]+), ", bench_run.process.stderr, re.M)
    assert [(int(n) - 1, server) for n, server in progress] == [
        (index, server) for index, _, server, _ in expected
    ]


def test_sound_servers_pass_and_faulty_ones_fail(bench_run: BenchRun) -> None:
    for run in bench_run.report["runs"]:
        if run["server"] in FAULTY:
            assert not run["ok"]
            assert run["error"]
        else:
            assert run["ok"], run["error"]
            assert run["echoes"] > 0
            assert run["latency_us"] is not None
    results = {(r["server"], r["workload"]): r for r in bench_run.report["results"]}
    assert len(results) == len(SERVERS) * len(SETTINGS.workloads)
    for (server, _), result in results.items():
        assert result["ok"] is (server not in FAULTY)
        assert (result["echoes_per_s"] is None) is (server in FAULTY)
    corrupt = results["broken", "64B-1c-1p"]["error"]
    assert re.search(r"echoed byte \d+ is 0x.., but 0x.. was sent there", corrupt)
    died = results["broken-die", "64B-1c-1p"]["error"]
    assert "the server exited with status 3" in died
    assert bench_run.process.returncode == 1


def test_ratios_compare_with_the_baseline(bench_run: BenchRun) -> None:
    results = bench_run.report["results"]
    base = {r["workload"]: r for r in results if r["server"] == "tutorial"}
    for result in results:
        ratio = result["ratio"]["echoes_per_s"]
        if result["loadgen_limited"] or base[result["workload"]]["loadgen_limited"]:
            assert ratio is None  # a load generator figure is no server figure
        elif result["server"] == "tutorial":
            assert ratio == 1.0
        elif result["ok"]:
            assert ratio is not None
            assert ratio > 0


def test_markdown_table_goes_to_stdout(bench_run: BenchRun) -> None:
    lines = bench_run.process.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| server |"))
    assert "echoes/s" in header
    assert "x base" in header
    assert "x base: echoes/s over the baseline's (tutorial)" in lines[-5:] or any(
        "over the baseline's (tutorial)" in line for line in lines
    )
    assert "64 B, 1 conn:" in lines
    start = lines.index("64 B, 1 conn:")
    rows = lines[start + 4 :][: len(SERVERS)]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(SERVERS)
    assert "FAILED [" in rows[2]


def test_saved_report_prints_and_plots_again(
    bench_run: BenchRun, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    markdown, plot = tmp_path / "table.md", tmp_path / "chart.svg"
    process = anyecho_bench(
        "--from-json",
        str(bench_run.json_path),
        "--markdown",
        str(markdown),
        "--plot",
        str(plot),
        "--plot-metric",
        "cpu_us_per_echo",
    )
    assert process.returncode == 1  # the report holds failed runs
    assert "anyecho-asyncio" in process.stdout  # the terminal table
    assert "4 KiB, 3 conns:" in markdown.read_text()
    assert "| tutorial |" in markdown.read_text()
    assert f"wrote {markdown}, {plot}" in process.stderr
    assert plot.read_text().lstrip().startswith("<?xml")


# -- the command line -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "0"], "invalid size"),
        (["--sizes", "big"], "invalid size"),
        (["--connections", "1,x"], "invalid count"),
        (["--servers", "nosuch"], "unknown server 'nosuch'"),
        (["--duration", "0"], "invalid value"),
        (["--plot", "chart.gif"], "expected a name ending in .png or .svg"),
        (["--servers", "tutorial", "--baseline", "trio-raw"], "--baseline trio-raw"),
        (["--json", "/nonexistent/dir/report.json"], "no such directory"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(args: list[str], message: str) -> None:
    process = anyecho_bench(*args)
    assert process.returncode == 2
    assert process.stdout == ""
    lines = process.stderr.splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith("anyecho")
    assert message in lines[0]


def test_plot_metrics_are_the_ones_the_chart_knows() -> None:
    assert tuple(render.METRICS) == cli.PLOT_METRICS


def test_list_servers_shows_hidden_and_unavailable_ones() -> None:
    process = anyecho_bench("--list-servers")
    assert process.returncode == 0
    names = [line.split()[0] for line in process.stdout.splitlines()]
    assert {"anyecho-asyncio", "tutorial", "protocol-asyncio", "broken"} <= set(names)
    assert re.search(r"^broken .*\[hidden\]$", process.stdout, re.M)


# -- open loop: latency from the intended send time ------------------------------


def stalling_run(tmp_path: Path, *load: str) -> dict[str, Any]:
    """The one run of a short benchmark of the stalling server."""
    json_path = tmp_path / "report.json"
    process = anyecho_bench(
        *("--servers", "stalling", "--sizes", "64", "--connections", "4"),
        *("--duration", "2", "--warmup", "0.2", "--repeat", "1", "-q"),
        *("--json", str(json_path), *load),
    )
    assert process.returncode == 0, process.stderr
    report: dict[str, Any] = json.loads(json_path.read_text())
    check(report, REPORT_SCHEMA)
    [run] = report["runs"]
    assert run["ok"], run["error"]
    return report


def test_open_loop_shows_the_stalls_that_closed_loop_hides(tmp_path: Path) -> None:
    stall_us = STALL * 1e6
    open_report = stalling_run(tmp_path, "--rate", "1000")
    closed_report = stalling_run(tmp_path, "--pipeline", "1")
    [open_run], [closed_run] = open_report["runs"], closed_report["runs"]
    assert open_report["settings"]["mode"] == "open"
    assert open_report["settings"]["schedule"] == "fixed"
    assert open_run["requested_rate"] == 1000.0
    # A stall at the end of the window holds back up to 15 % of its echoes.
    assert open_run["echoes_per_s"] >= 800
    assert open_run["scheduled"] == pytest.approx(2000, rel=0.05)
    assert not open_run["loadgen_limited"], open_run["limited_by"]
    open_p99 = open_run["latency_us"]["p99"]
    closed_p99 = closed_run["latency_us"]["p99"]
    # Every message due during a stall waits for its end: with 150 ms stalls
    # every 500 ms, the slowest 1 % of round trips take most of a stall ...
    assert open_p99 >= 0.5 * stall_us, (open_p99, closed_p99)
    # ... while closed loop sends nothing meanwhile, so few round trips see one.
    assert closed_report["settings"]["mode"] == "closed"
    assert closed_run["requested_rate"] is None
    assert closed_p99 < open_p99 / 3, (open_p99, closed_p99)
    assert closed_run["latency_us"]["max"] >= 0.5 * stall_us  # it did stall


def test_a_poisson_schedule_is_recorded_with_its_seed(tmp_path: Path) -> None:
    report = stalling_run(tmp_path, "--rates", "500", "--schedule", "poisson")
    assert report["settings"]["schedule"] == "poisson"
    assert report["settings"]["seed"] == 0
    assert report["settings"]["rates"] == [500.0]
    [run] = report["runs"]
    assert run["scheduled"] == pytest.approx(1000, rel=0.2)


# -- the load generator's limit --------------------------------------------------


def lag_histogram(*values_us: float) -> Histogram:
    histogram = Histogram()
    histogram.add_all(int(value * 1e3) for value in values_us)
    return histogram


def test_a_saturated_load_generator_is_no_server_figure() -> None:
    run = schedule(["a", "b"], [Workload(64, 1)], 1)
    measured = Measurement(window_s=1.0, echoes=1000, client_cpu_s=[0.97])
    measured.latency = lag_histogram(100)
    record = run_record(run[0], measured)
    assert record["client_saturated"]
    assert record["loadgen_limited"]
    assert "load generator at 97 % CPU" in (record["limited_by"] or "")
    assert record["client_cpu_us_per_echo"] == pytest.approx(970)
    healthy = Measurement(window_s=1.0, echoes=1000, client_cpu_s=[0.3])
    healthy.latency = lag_histogram(100)
    other = run_record(run[1], healthy)
    assert not other["loadgen_limited"]
    results = report_results([record, other], ["a", "b"], "b")
    assert [r["loadgen_limited"] for r in results] == [True, False]
    assert results[0]["ratio"] == {"echoes_per_s": None, "cpu_us_per_echo": None}


@pytest.mark.parametrize(
    ("lag_us", "latency_us", "limited"),
    [(5_000, 6_000, True), (5_000, 150_000, False), (500, 600, False)],
)
def test_a_load_generator_behind_its_schedule_is_flagged(
    lag_us: float, latency_us: float, limited: bool
) -> None:
    [run] = schedule(["a"], [Workload(64, 1, rate=1000.0)], 1)
    measured = Measurement(
        window_s=1.0, echoes=990, client_cpu_s=[0.2], requested_rate=1000.0
    )
    measured.latency = lag_histogram(*[100] * 98, latency_us, latency_us)
    measured.lag = lag_histogram(*[10] * 98, lag_us, lag_us)
    record = run_record(run, measured)
    assert record["mode"] == "open"
    assert record["held_rate"] is True
    assert record["loadgen_limited"] is limited
    assert ("late on its schedule" in (record["limited_by"] or "")) is limited


def test_a_rate_the_server_does_not_hold_is_a_server_figure() -> None:
    [run] = schedule(["a"], [Workload(64, 1, rate=1000.0)], 1)
    measured = Measurement(
        window_s=1.0, echoes=500, client_cpu_s=[0.2], requested_rate=1000.0
    )
    measured.latency = lag_histogram(100)
    measured.lag = lag_histogram(10)
    record = run_record(run, measured)
    assert record["held_rate"] is False
    assert not record["loadgen_limited"]


def test_a_sweep_stops_a_server_at_its_knee(tmp_path: Path) -> None:
    json_path = tmp_path / "report.json"
    process = anyecho_bench(
        *("--servers", "stalling,protocol-asyncio", "--sizes", "64"),
        *("--connections", "2", "--duration", "1", "--warmup", "0.2"),
        *("--repeat", "1", "--sweep", "--sweep-start", "500"),
        *("--sweep-factor", "2", "--sweep-steps", "2", "--json", str(json_path)),
    )
    assert process.returncode == 0, process.stderr
    report = json.loads(json_path.read_text())
    check(report, REPORT_SCHEMA)
    assert report["settings"]["sweep"] is True
    assert report["settings"]["p99_limit_us"] == 10_000.0
    assert [w["rate"] for w in report["workloads"]][:1] == [500.0]
    runs = report["runs"]
    # The first step runs both servers, interleaved; the stalling one's p99 is
    # far over the limit, so it gets no second step.
    assert [(r["server"], r["requested_rate"]) for r in runs[:2]] == [
        ("stalling", 500.0),
        ("protocol-asyncio", 500.0),
    ]
    assert [r["server"] for r in runs[2:]] in ([], ["protocol-asyncio"])
    assert [r["index"] for r in runs] == list(range(len(runs)))
    highest = {entry["server"]: entry for entry in report["highest_rates"]}
    assert highest["stalling"]["rate"] is None
    assert "over the limit at 500/s" in highest["stalling"]["stopped_by"]
    assert "highest rate held with p99 under 10ms" in process.stdout


# -- any server ------------------------------------------------------------------


def rounds_run(report: dict[str, Any], repeat: int) -> int:
    """The rounds a report ran: all ``repeat``, or only the first when it found
    the load generator the limit for every server (on a busy machine), which
    the report then says."""
    if not report["skipped"]:
        return repeat
    assert all(run["loadgen_limited"] for run in report["runs"]), report["runs"]
    assert all("load generator was the limit" in s["reason"] for s in report["skipped"])
    return 1


def test_servers_of_ones_own_and_running_targets_join_the_rounds(
    tmp_path: Path,
) -> None:
    json_path = tmp_path / "report.json"
    command = "{python} -m anyecho.bench.baselines.protocol --port {port}"
    with subprocess.Popen(
        [sys.executable, "-m", "anyecho.bench.baselines.tutorial", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as running:
        assert running.stdout is not None
        ready = running.stdout.readline()
        port = re.search(r"tcp://127\.0\.0\.1:(\d+)", ready)
        assert port is not None, ready
        process = anyecho_bench(
            *("--servers", "tutorial", "--server", f"mine={command}"),
            *("--target", f"127.0.0.1:{port[1]}", "--target-pid", str(running.pid)),
            *("--sizes", "64", "--connections", "2", "--duration", "0.3"),
            *("--warmup", "0.1", "--repeat", "2", "-q", "--json", str(json_path)),
        )
        running.terminate()
    assert process.returncode == 0, process.stderr
    report = json.loads(json_path.read_text())
    check(report, REPORT_SCHEMA)
    assert report["settings"]["servers"] == ["tutorial", "mine", "target"]
    rounds = rounds_run(report, 2)
    assert [r["server"] for r in report["runs"]] == [
        "tutorial",
        "mine",
        "target",
    ] * rounds
    for run in report["runs"]:
        assert run["ok"], run["error"]
        assert run["cpu_us_per_echo"] is not None  # the target's, by its pid
    mine = next(s for s in report["servers"] if s["name"] == "mine")
    assert mine["command"][0] == sys.executable
    assert "{port}" in mine["command"][-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server", "mine"], "expected NAME=COMMAND"),
        (["--server", "mine=./srv"], "needs a {port} placeholder"),
        (["--server", "tutorial=./srv {port}"], "already a server's name"),
        (["--target", "localhost"], "expected HOST:PORT"),
        (["--target-pid", "1"], "--target-pid needs --target"),
        (["--rate", "fast"], "invalid rate 'fast'"),
        (["--rate", "1k", "--sweep"], "not allowed with argument"),
        (["--sweep-factor", "1"], "expected a number above 1"),
    ],
)
def test_bad_load_and_server_options_give_one_line(
    args: list[str], message: str
) -> None:
    process = anyecho_bench(*args)
    assert process.returncode == 2
    lines = process.stderr.splitlines()
    assert len(lines) == 1, process.stderr
    assert message in lines[0]


def other_interpreter() -> str:
    """Another Python 3.10+ than this one (pyenv's, where there is one)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for version in ("3.12", "3.13", "3.11", "3.10"):
        for candidate in sorted(pyenv.glob(f"{version}.*/bin/python")):
            if candidate.resolve() != Path(sys.executable).resolve():
                return str(candidate)
    pytest.skip("no other Python interpreter here")


def test_servers_run_on_other_interpreters_in_the_same_rounds(tmp_path: Path) -> None:
    python = other_interpreter()
    json_path = tmp_path / "report.json"
    process = anyecho_bench(
        *("--servers", "tutorial", "--python", python, "--sizes", "64"),
        *("--connections", "2", "--duration", "0.3", "--warmup", "0.1"),
        *("--repeat", "2", "-q", "--json", str(json_path)),
    )
    report = json.loads(json_path.read_text())
    [other] = [s for s in report["servers"] if s["name"] != "tutorial"]
    assert re.fullmatch(r"tutorial@3\.\d+", other["name"])
    assert other["command"][0] == python
    if other["status"] != "ok":  # that interpreter lacks a dependency: say which
        assert "No module named" in other["reason"] or "importable" in other["reason"]
        return
    assert process.returncode == 0, process.stderr
    rounds = rounds_run(report, 2)
    assert [r["server"] for r in report["runs"]] == ["tutorial", other["name"]] * rounds


@pytest.mark.parametrize(
    ("transport", "name"), [("unix", "Unix sockets"), ("tls", "TLS")]
)
def test_the_load_goes_over_a_transport_to_the_servers_that_serve_it(
    tmp_path: Path, transport: str, name: str
) -> None:
    if transport == "tls":
        pytest.importorskip("trustme")
    json_path = tmp_path / "report.json"
    process = anyecho_bench(
        *("--servers", "anyecho-asyncio,tutorial,trio-raw", "--transport", transport),
        *("--sizes", "64", "--connections", "2", "--duration", "0.3"),
        *("--warmup", "0.1", "--repeat", "1", "-q", "--json", str(json_path)),
    )
    assert process.returncode == 0, process.stderr
    report = json.loads(json_path.read_text())
    assert report["settings"]["transport"] == transport
    status = {s["name"]: (s["status"], s["reason"]) for s in report["servers"]}
    assert status["trio-raw"] == ("unavailable", f"it does not serve {name}")
    assert [r["server"] for r in report["runs"]] == ["anyecho-asyncio", "tutorial"]
    assert all(r["ok"] and r["echoes"] for r in report["runs"])


def test_rounds_the_load_generator_cannot_measure_are_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from anyecho.bench import runner
    from anyecho.bench.progress import QuietProgress

    class Servers:
        def names(self) -> list[str]:
            return ["a", "b"]

        def get(self, name: str) -> str:
            return name

    def measure(server: object, run: PlannedRun, *_: object) -> Measurement:
        # At 64 B the load generator is at its limit for every server.
        busy = 0.99 if run.workload.size == 64 else 0.2
        return Measurement(window_s=1.0, echoes=100, client_cpu_s=[busy])

    monkeypatch.setattr(runner, "measure", measure)
    settings = Settings(servers=("a", "b"), sizes=(64, 1024), connections=(1,))
    records: list[Any] = []
    skipped: list[Any] = []
    assert runner._run_planned(
        settings.workloads,
        servers=cast(Any, Servers()),
        generators=[],
        settings=settings,
        progress=QuietProgress(),
        records=records,
        skipped=skipped,
    )
    # 64 B: the first round only; 1 KiB: every round, interleaved.
    assert [(r["workload"], r["round"], r["server"]) for r in records] == [
        ("64B-1c-1p", 0, "a"),
        ("64B-1c-1p", 0, "b"),
        *[("1024B-1c-1p", n, s) for n in range(3) for s in "ab"],
    ]
    assert [(s["workload"], s["runs"]) for s in skipped] == [("64B-1c-1p", 4)]
    assert "the load generator was the limit" in skipped[0]["reason"]
