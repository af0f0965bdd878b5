"""The benchmark's results as one JSON document, schema ``anyecho-bench/2``.

``anyecho bench --json FILE`` writes it, and ``anyecho bench --from-json FILE``
reads it back to print or plot it again. The types below spell out every key;
in short, the document is an object with:

``schema`` (str)
    ``"anyecho-bench/2"``. Keys may be added under this name; a key removed or
    changed in meaning gets a new one.
``created`` (str)
    when the benchmark started, in UTC: ``2025-01-31T12:00:00Z``
``complete`` (bool)
    ``false`` when it was interrupted; ``runs`` then holds the runs done so far
``machine`` (object)
    ``platform``, ``system``, ``machine``, ``python_implementation`` (str),
    ``cpu_count`` (int), ``cpus_usable`` (int, or null where affinity is
    unknown), ``cpu_model`` (str, or null where ``/proc/cpuinfo`` does not say),
    ``kernel`` (str: the operating system's release)
``versions`` (object)
    version strings by package, null when not installed: ``python``, ``anyecho``,
    ``anyio``, ``trio``, ``uvloop``, and every other event loop tried
``settings`` (object)
    ``servers`` (list of str: the names asked for, in report order), ``baseline``
    (str or null), ``sizes`` (list of int: bytes), ``connections`` (list of int),
    ``pipeline`` and ``repeat`` (int), ``duration_s``, ``warmup_s`` and
    ``drain_timeout_s`` (float), ``pin`` (bool), ``server_cpus`` (list of int, or
    null when not pinned), ``client_cpus`` (one per load generator process: list
    of int or null), ``loadgen_loop`` (str: the load generator's event loop),
    ``mode`` (``"closed"``: throughput at concurrency N; ``"open"``: offered
    load), ``rates`` (list of float: the offered loads, echoes/s; empty in
    closed loop), ``schedule`` (``"fixed"``, ``"poisson"``, or null in closed
    loop), ``seed`` (int: seeds the Poisson schedule), ``sweep`` (bool),
    ``p99_limit_us`` (float: the p99 under which a rate counts as held) and
    ``transport`` (``"tcp"`` or ``"unix"``)
``servers`` (list of objects)
    every server asked for: ``name``, ``description`` (str), ``command`` (list of
    str), ``status`` (``"ok"``; ``"unavailable"``: a package is missing;
    ``"unsupported"``: it did not start or failed its check echo) and ``reason``
    (str, or null when ok)
``workloads`` (list of objects)
    ``id`` (str: the key that runs and results use), ``label`` (str), ``size``,
    ``connections``, ``pipeline`` (int), ``rate`` (float: echoes/s offered, or
    null in closed loop)
``runs`` (list of objects)
    every run, in the order they ran: ``index``, ``round`` (int, from 0),
    ``server``, ``workload`` (str), ``ok`` (bool), ``error`` (str or null),
    ``window_s`` (float: seconds measured), ``echoes`` (int: round trips in the
    window), ``echoes_per_s``, ``mib_per_s`` (float: MiB echoed per second, each
    way; in open loop, the achieved rate), ``latency_us`` (round-trip times in
    µs, in open loop from each message's intended send time: object with float
    ``p50``, ``p90``, ``p99``, ``p999``, ``max``; null without echoes),
    ``server_cpu_s`` and
    ``cpu_us_per_echo`` (float: the server's CPU time in the window, in all and per
    echo; null where it cannot be read), ``client_cpu_percent`` (list of float:
    each load generator process's CPU use in the window, in % of one core),
    ``client_saturated`` (bool: one of them was near 100 %),
    ``client_cpu_us_per_echo`` (float: the load generators' CPU time per echo, or
    null), ``mode`` (as in settings), ``requested_rate`` (float or null),
    ``scheduled`` (int: open loop, messages due in the window), ``send_lag_us``
    (open loop: how late the load generator handed messages to their
    connections, as ``latency_us``; else null), ``held_rate`` (bool: the achieved
    rate was at least 95 % of the requested one; null in closed loop),
    ``loadgen_limited`` (bool: the load generator, not the server, was the
    limit: near 100 % CPU, or late on its schedule) and ``limited_by`` (str: how,
    or null)
``results`` (list of objects)
    one per server that ran and workload: ``server``, ``workload`` (str), ``ok``
    (bool: every run was), ``error`` (str or null: the first failure), ``runs``
    (int), ``client_saturated`` (bool: in any run); summaries over the runs, each
    an object with float ``median``, ``min`` and ``max``, and null unless ``ok``:
    ``echoes_per_s``, ``mib_per_s``, ``cpu_us_per_echo`` (also null when unknown),
    ``latency_us`` (object: ``p50``, ``p90``, ``p99``, ``p999``, ``max``, each a
    summary), ``client_cpu_percent`` (of the busiest load generator process in
    each run), ``client_cpu_us_per_echo``, ``send_lag_us_p99``;
    ``requested_rate`` (float or null), ``held_rate`` (bool or null: in every
    run), ``loadgen_limited`` (bool: in any run) and ``limited_by`` (str or
    null); and ``ratio`` (object: ``echoes_per_s`` and ``cpu_us_per_echo``,
    float: the median over the baseline's median for the same workload; null
    without one, and null where this server's or the baseline's figure was the
    load generator's limit)
``highest_rates`` (list of objects)
    open loop, per server, size and connection count: ``server`` (str),
    ``size``, ``connections`` (int), ``rate`` (float: the highest rate offered,
    rising from the lowest, that the server held with a p99 under
    ``p99_limit_us`` and with the load generator not the limit; null when none
    was) and ``stopped_by`` (str: what failed at the next rate, or null)
``skipped`` (list of objects)
    the runs not made: ``workload`` (str), ``runs`` (int) and ``reason`` (str)
``warnings`` (list of str)
    what may make the figures less trustworthy (a saturated load generator, a
    single CPU, ...)
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from . import _proc
from .histogram import Histogram
from .plan import PlannedRun, Settings, Workload
from .servers import EXTRA_LOOPS

__all__ = [
    "SCHEMA",
    "Measurement",
    "Report",
    "RunRecord",
    "ServerRecord",
    "ServerStatus",
    "SkippedRecord",
    "build",
    "holds",
    "run_record",
    "settings_record",
    "sweep_goes_on",
]

#: The value of the ``schema`` key.
SCHEMA = "anyecho-bench/2"

#: A load generator process above this CPU use (% of one core) may have held the
#: server back: the run measured the load generator, not the server.
SATURATED_PERCENT = 90.0
#: Open loop: a load generator whose send lag (how late it handed messages to
#: their connections) has a 99th percentile above this fell behind its own
#: schedule, so the latencies include its delay (µs) ...
LAG_LIMIT_US = 1000.0
#: ... when that lag is also more than this share of the round trips' own p99.
LAG_SHARE = 0.25
#: Open loop: a run that completes fewer echoes per second than this fraction of
#: the offered rate did not hold it.
HELD_FRACTION = 0.95

#: Failures of one run listed in its ``error``.
_ERRORS_SHOWN = 3


class MachineRecord(TypedDict):
    platform: str
    system: str
    machine: str
    python_implementation: str
    cpu_count: int
    cpus_usable: int | None
    cpu_model: str | None
    kernel: str


class SettingsRecord(TypedDict):
    servers: list[str]
    baseline: str | None
    sizes: list[int]
    connections: list[int]
    pipeline: int
    repeat: int
    duration_s: float
    warmup_s: float
    drain_timeout_s: float
    pin: bool
    server_cpus: list[int] | None
    client_cpus: list[list[int] | None]
    loadgen_loop: str
    mode: Literal["closed", "open"]
    rates: list[float]
    schedule: Literal["fixed", "poisson"] | None
    seed: int
    sweep: bool
    p99_limit_us: float
    transport: str


ServerStatus = Literal["ok", "unavailable", "unsupported"]


class ServerRecord(TypedDict):
    name: str
    description: str
    command: list[str]
    status: ServerStatus
    reason: str | None


class WorkloadRecord(TypedDict):
    id: str
    label: str
    size: int
    connections: int
    pipeline: int
    rate: float | None


class Latency(TypedDict):
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


class RunRecord(TypedDict):
    index: int
    round: int
    server: str
    workload: str
    ok: bool
    error: str | None
    window_s: float
    echoes: int
    echoes_per_s: float
    mib_per_s: float
    latency_us: Latency | None
    server_cpu_s: float | None
    cpu_us_per_echo: float | None
    client_cpu_percent: list[float]
    client_saturated: bool
    client_cpu_us_per_echo: float | None
    mode: Literal["closed", "open"]
    requested_rate: float | None
    scheduled: int
    send_lag_us: Latency | None
    held_rate: bool | None
    loadgen_limited: bool
    limited_by: str | None


class Summary(TypedDict):
    median: float
    min: float
    max: float


class LatencySummary(TypedDict):
    p50: Summary
    p90: Summary
    p99: Summary
    p999: Summary
    max: Summary


class Ratio(TypedDict):
    echoes_per_s: float | None
    cpu_us_per_echo: float | None


class ResultRecord(TypedDict):
    server: str
    workload: str
    ok: bool
    error: str | None
    runs: int
    client_saturated: bool
    echoes_per_s: Summary | None
    mib_per_s: Summary | None
    cpu_us_per_echo: Summary | None
    latency_us: LatencySummary | None
    client_cpu_percent: Summary | None
    client_cpu_us_per_echo: Summary | None
    requested_rate: float | None
    send_lag_us_p99: Summary | None
    held_rate: bool | None
    loadgen_limited: bool
    limited_by: str | None
    ratio: Ratio


class SkippedRecord(TypedDict):
    workload: str
    runs: int
    reason: str


class HighestRate(TypedDict):
    server: str
    size: int
    connections: int
    rate: float | None
    stopped_by: str | None


class Report(TypedDict):
    schema: str
    created: str
    complete: bool
    machine: MachineRecord
    versions: dict[str, str | None]
    settings: SettingsRecord
    servers: list[ServerRecord]
    workloads: list[WorkloadRecord]
    runs: list[RunRecord]
    results: list[ResultRecord]
    highest_rates: list[HighestRate]
    skipped: list[SkippedRecord]
    warnings: list[str]


@dataclass
class Measurement:
    """The raw figures of one run, as the runner gathers them.

    :param window_s: seconds measured
    :param echoes: round trips completed in the window
    :param latency: their round-trip times (ns)
    :param server_cpu_s: the server's CPU time in the window, if known
    :param client_cpu_s: each load generator process's CPU time in the window
    :param errors: every failure seen, most telling first
    :param requested_rate: open loop: the offered load (messages/s)
    :param scheduled: open loop: messages due within the window
    :param lag: open loop: the load generators' send lag (ns)
    """

    window_s: float
    echoes: int = 0
    latency: Histogram = field(default_factory=Histogram)
    server_cpu_s: float | None = None
    client_cpu_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requested_rate: float | None = None
    scheduled: int = 0
    lag: Histogram = field(default_factory=Histogram)


def run_record(run: PlannedRun, measured: Measurement) -> RunRecord:
    """The ``runs`` entry for one run."""
    window = measured.window_s
    echoes = measured.echoes
    errors = measured.errors or ([] if echoes else ["no echo completed in the window"])
    client_percent = [round(cpu / window * 100, 1) for cpu in measured.client_cpu_s]
    cpu = measured.server_cpu_s
    client_cpu = sum(measured.client_cpu_s)
    lag = _latency(measured.lag)
    rate = measured.requested_rate
    held = None if rate is None else echoes / window >= HELD_FRACTION * rate
    limits = []
    if (busiest := max(client_percent, default=0.0)) >= SATURATED_PERCENT:
        limits.append(f"load generator at {busiest:.0f} % CPU")
    latency = _latency(measured.latency)
    if (
        lag is not None
        and lag["p99"] > LAG_LIMIT_US
        and (latency is None or lag["p99"] > LAG_SHARE * latency["p99"])
    ):
        limits.append(
            f"load generator late on its schedule (send lag p99 "
            f"{lag['p99'] / 1e3:.1f} ms)"
        )
    return {
        "index": run.index,
        "round": run.round,
        "server": run.server,
        "workload": run.workload.id,
        "ok": not errors,
        "error": _join_errors(errors),
        "window_s": window,
        "echoes": echoes,
        "echoes_per_s": echoes / window,
        "mib_per_s": echoes * run.workload.size / window / (1 << 20),
        "latency_us": latency,
        "server_cpu_s": cpu,
        "cpu_us_per_echo": cpu / echoes * 1e6 if cpu is not None and echoes else None,
        "client_cpu_percent": client_percent,
        "client_saturated": any(p >= SATURATED_PERCENT for p in client_percent),
        "client_cpu_us_per_echo": client_cpu / echoes * 1e6 if echoes else None,
        "mode": "closed" if rate is None else "open",
        "requested_rate": rate,
        "scheduled": measured.scheduled,
        "send_lag_us": lag,
        "held_rate": held,
        "loadgen_limited": bool(limits),
        "limited_by": "; ".join(limits) or None,
    }


def holds(runs: Sequence[RunRecord], p99_limit_us: float) -> bool:
    """Whether a server held an offered rate in these runs of it: every one
    succeeded, completed at least 95 % of the rate, with a p99 under the limit,
    and the load generator was not the limit."""
    return bool(runs) and all(
        run["ok"]
        and run["held_rate"] is not False
        and not run["loadgen_limited"]
        and run["latency_us"] is not None
        and run["latency_us"]["p99"] <= p99_limit_us
        for run in runs
    )


def sweep_goes_on(runs: Sequence[RunRecord], p99_limit_us: float) -> bool:
    """Whether a sweep offers a server the next rate after these runs of it: it
    held this one with a p99 under the limit, and the load generator had CPU to
    spare. (A load generator late on its schedule does not stop a sweep; it only
    keeps that rate out of :func:`highest_rates`.)"""
    return bool(runs) and all(
        run["ok"]
        and run["held_rate"] is not False
        and not run["client_saturated"]
        and run["latency_us"] is not None
        and run["latency_us"]["p99"] <= p99_limit_us
        for run in runs
    )


def _join_errors(errors: Sequence[str]) -> str | None:
    if not errors:
        return None
    text = "; ".join(errors[:_ERRORS_SHOWN])
    hidden = len(errors) - _ERRORS_SHOWN
    return f"{text}; and {hidden} more" if hidden > 0 else text


def _latency(histogram: Histogram) -> Latency | None:
    if not histogram.count:
        return None
    q = histogram.quantile
    return {
        "p50": q(0.5) / 1e3,
        "p90": q(0.9) / 1e3,
        "p99": q(0.99) / 1e3,
        "p999": q(0.999) / 1e3,
        "max": q(1) / 1e3,
    }


def settings_record(
    settings: Settings,
    *,
    drain_timeout: float,
    server_cpus: Iterable[int] | None,
    client_cpus: Iterable[Iterable[int] | None],
    loadgen_loop: str,
) -> SettingsRecord:
    """The ``settings`` entry: what was asked for, and how it was laid out."""
    return {
        "servers": list(settings.servers),
        "baseline": settings.baseline,
        "sizes": list(settings.sizes),
        "connections": list(settings.connections),
        "pipeline": settings.pipeline,
        "repeat": settings.repeat,
        "duration_s": settings.duration,
        "warmup_s": settings.warmup,
        "drain_timeout_s": drain_timeout,
        "pin": settings.pin,
        "server_cpus": None if server_cpus is None else sorted(server_cpus),
        "client_cpus": [None if c is None else sorted(c) for c in client_cpus],
        "loadgen_loop": loadgen_loop,
        "mode": "open" if settings.open_loop else "closed",
        "rates": list(settings.rates),
        "schedule": (
            None
            if not settings.open_loop
            else "poisson"
            if settings.poisson
            else "fixed"
        ),
        "seed": settings.seed,
        "sweep": settings.sweep,
        "p99_limit_us": settings.p99_limit_us,
        "transport": settings.transport,
    }


def workload_record(workload: Workload) -> WorkloadRecord:
    """The ``workloads`` entry for one workload."""
    return {
        "id": workload.id,
        "label": workload.label,
        "size": workload.size,
        "connections": workload.connections,
        "pipeline": workload.pipeline,
        "rate": workload.rate,
    }


def build(
    *,
    created: str,
    complete: bool,
    settings: SettingsRecord,
    workloads: Sequence[Workload],
    servers: list[ServerRecord],
    runs: list[RunRecord],
    warnings: list[str],
    skipped: Sequence[SkippedRecord] = (),
) -> Report:
    """The whole document, with the results summed up from the runs."""
    summed = results(runs, settings["servers"], settings["baseline"])
    return {
        "schema": SCHEMA,
        "created": created,
        "complete": complete,
        "machine": machine_record(),
        "versions": versions(),
        "settings": settings,
        "servers": servers,
        "workloads": [workload_record(w) for w in workloads],
        "runs": runs,
        "results": summed,
        "highest_rates": highest_rates(
            runs, [workload_record(w) for w in workloads], settings["p99_limit_us"]
        ),
        "skipped": list(skipped),
        "warnings": warnings + _saturation_warnings(runs),
    }


def results(
    runs: Sequence[RunRecord], servers: Sequence[str], baseline: str | None
) -> list[ResultRecord]:
    """One summary per server and workload, by workload then in ``servers`` order."""
    grouped: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        grouped[run["workload"], run["server"]].append(run)
    workloads = list(dict.fromkeys(run["workload"] for run in runs))
    summaries = {
        key: _result(*key, grouped[key])
        for key in ((w, s) for w in workloads for s in servers)
        if key in grouped
    }
    for (workload, _), result in summaries.items():
        base = summaries.get((workload, baseline)) if baseline else None
        result["ratio"] = _ratio(result, base)
    return list(summaries.values())


def highest_rates(
    runs: Sequence[RunRecord],
    workloads: Sequence[WorkloadRecord],
    p99_limit_us: float,
) -> list[HighestRate]:
    """For each server, size and connection count offered open-loop load: the
    highest rate it held, rising from the lowest, with a p99 under the limit (see
    :func:`holds`), and what stopped it at the next."""
    by_id = {w["id"]: w for w in workloads}
    grouped: dict[tuple[str, int, int], dict[float, list[RunRecord]]] = {}
    for run in runs:
        workload = by_id[run["workload"]]
        if workload["rate"] is None:
            continue
        key = (run["server"], workload["size"], workload["connections"])
        grouped.setdefault(key, {}).setdefault(workload["rate"], []).append(run)
    found: list[HighestRate] = []
    for (server, size, connections), by_rate in grouped.items():
        best: float | None = None
        stopped: str | None = None
        for rate in sorted(by_rate):
            step = by_rate[rate]
            if holds(step, p99_limit_us):
                best = rate
                continue
            stopped = f"{_why_not(step, p99_limit_us)} at {rate:g}/s"
            break
        found.append(
            {
                "server": server,
                "size": size,
                "connections": connections,
                "rate": best,
                "stopped_by": stopped,
            }
        )
    return found


def _why_not(runs: Sequence[RunRecord], p99_limit_us: float) -> str:
    for run in runs:
        if not run["ok"]:
            return "failed"
        if run["loadgen_limited"]:
            return "the load generator's limit"
        latency = run["latency_us"]
        if latency is not None and latency["p99"] > p99_limit_us:
            p99 = latency["p99"]
            shown = f"{p99 / 1e3:.3g} ms" if p99 < 1e6 else f"{p99 / 1e6:.3g} s"
            return f"p99 {shown} over the limit"
        if run["held_rate"] is False:
            return "rate not held"
    return "not held"  # pragma: no cover - holds() said one of the above


def _result(workload: str, server: str, runs: list[RunRecord]) -> ResultRecord:
    failed = next((run for run in runs if not run["ok"]), None)
    ok = failed is None
    cpu = [r["cpu_us_per_echo"] for r in runs]
    latencies = [r["latency_us"] for r in runs]
    client = [max(r["client_cpu_percent"], default=0.0) for r in runs]
    lags = [r["send_lag_us"]["p99"] if r["send_lag_us"] else None for r in runs]
    held = [r["held_rate"] for r in runs]
    limited = next((r for r in runs if r["loadgen_limited"]), None)
    return {
        "server": server,
        "workload": workload,
        "ok": ok,
        "error": None if failed is None else failed["error"],
        "runs": len(runs),
        "client_saturated": any(run["client_saturated"] for run in runs),
        "echoes_per_s": _summary([r["echoes_per_s"] for r in runs]) if ok else None,
        "mib_per_s": _summary([r["mib_per_s"] for r in runs]) if ok else None,
        "cpu_us_per_echo": _summary(cpu) if ok else None,
        "latency_us": _latency_summary(latencies) if ok else None,
        "client_cpu_percent": _summary(client) if ok else None,
        "client_cpu_us_per_echo": (
            _summary([r["client_cpu_us_per_echo"] for r in runs]) if ok else None
        ),
        "requested_rate": runs[0]["requested_rate"],
        "send_lag_us_p99": _summary(lags) if ok else None,
        "held_rate": None if None in held else all(held),
        "loadgen_limited": limited is not None,
        "limited_by": None if limited is None else limited["limited_by"],
        "ratio": {"echoes_per_s": None, "cpu_us_per_echo": None},
    }


def _summary(values: Sequence[float | None]) -> Summary | None:
    known = [v for v in values if v is not None]
    if not known or len(known) < len(values):
        return None
    return {"median": statistics.median(known), "min": min(known), "max": max(known)}


def _latency_summary(latencies: Sequence[Latency | None]) -> LatencySummary | None:
    known = [latency for latency in latencies if latency is not None]
    if not known or len(known) < len(latencies):
        return None
    return {
        "p50": _median_summary([latency["p50"] for latency in known]),
        "p90": _median_summary([latency["p90"] for latency in known]),
        "p99": _median_summary([latency["p99"] for latency in known]),
        "p999": _median_summary([latency["p999"] for latency in known]),
        "max": _median_summary([latency["max"] for latency in known]),
    }


def _median_summary(values: Sequence[float]) -> Summary:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ratio(result: ResultRecord, base: ResultRecord | None) -> Ratio:
    """The result over the baseline's; none where either measured the load
    generator rather than the server."""
    if base is None or result["loadgen_limited"] or base["loadgen_limited"]:
        return {"echoes_per_s": None, "cpu_us_per_echo": None}
    return {
        "echoes_per_s": _quotient(result["echoes_per_s"], base["echoes_per_s"]),
        "cpu_us_per_echo": _quotient(
            result["cpu_us_per_echo"], base["cpu_us_per_echo"]
        ),
    }


def _quotient(value: Summary | None, base: Summary | None) -> float | None:
    if value is None or not base or not base["median"]:
        return None
    return value["median"] / base["median"]


def _saturation_warnings(runs: Sequence[RunRecord]) -> list[str]:
    limited = sum(run["loadgen_limited"] for run in runs)
    if not limited:
        return []
    warning = (
        f"the load generator was the limit in {limited} of {len(runs)} runs "
        f"(near 100 % CPU, or its send lag p99 over {LAG_LIMIT_US / 1e3:g} ms and "
        f"over {LAG_SHARE:.0%} of the round trips' p99; "
        "marked !): those cells measure the load generator, not the server, and "
        "are left out of every ratio"
    )
    return [warning]


def machine_record() -> MachineRecord:
    """The ``machine`` entry for this machine."""
    usable = _proc.usable_cpus()
    return {
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "python_implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count() or 1,
        "cpus_usable": None if usable is None else len(usable),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in {"model name", "Model", "cpu model"}:
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def versions() -> dict[str, str | None]:
    """The ``versions`` entry: Python's and each relevant package's."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("anyecho", "anyio", "trio", "uvloop", *EXTRA_LOOPS):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found
