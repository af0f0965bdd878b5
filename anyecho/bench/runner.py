"""Run a benchmark: start the servers and load generators, measure, stop them all.

The layout on the CPUs: where this process may use two CPUs or more and pinning is
on, every server is pinned to the first one and each load generator process to one
of the others (so on two cores: server on one, client on the other), and this
process, which mostly sleeps, stays off the server's CPU.

Each run opens fresh connections, starts the load, and measures a window that every
process agrees on (:class:`~anyecho.bench.loadgen.Window`); the server's CPU time is
sampled right at the window's start and end. A server that dies is started again
for its next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypedDict

from . import _proc
from .loadgen import Job, JobResult, Window
from .plan import PlannedRun, Settings, Workload, schedule
from .report import (
    Measurement,
    Report,
    RunRecord,
    ServerRecord,
    ServerStatus,
    SkippedRecord,
    run_record,
    settings_record,
    sweep_goes_on,
)
from .report import build as build_report
from .servers import (
    Interpreter,
    ServerError,
    ServerProcess,
    ServerSpec,
    custom_spec,
    on_python,
    registry,
    target_spec,
)

__all__ = [
    "LoadGenerator",
    "LoadGeneratorError",
    "Progress",
    "measure",
    "plan_cpus",
    "run_bench",
    "split_connections",
]

#: Seconds between telling the load generators to go and their first message.
GO_LEAD = 0.02
#: The most seconds a run may take to get back its last echoes and closes.
DRAIN_TIMEOUT = 5.0
#: How long a load generator may take to start, connect, or report beyond that.
LOADGEN_TIMEOUT = 30.0
#: Seconds each run costs besides its warm-up and window, for estimates.
RUN_OVERHEAD = 0.1


class LoadGeneratorError(Exception):
    """A load generator process failed: the benchmark cannot go on."""


class Progress(Protocol):
    """What the runner tells the user while it works."""

    def message(self, text: str) -> None:
        """A one-line note."""

    def begin(self, runs: int, seconds: float) -> None:
        """The runs are about to start; they should take about ``seconds``."""

    def run_started(self, run: PlannedRun) -> None:
        """``run`` starts."""

    def run_finished(self, run: PlannedRun, record: RunRecord) -> None:
        """``run`` ended with ``record``."""

    def end(self) -> None:
        """No more runs."""


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs each process may use (``None``: any).

    :param clients: one entry per load generator process
    :param own: this process's
    """

    server: tuple[int, ...] | None
    clients: tuple[tuple[int, ...] | None, ...]
    own: tuple[int, ...] | None
    warnings: tuple[str, ...] = ()


def plan_cpus(pin: bool, clients: int | None, max_connections: int) -> CpuPlan:
    """Lay the processes out on the CPUs this process may use.

    Without a ``clients`` count, there is one load generator per CPU left over
    from the server, but no more than the largest connection count needs.
    """
    cpus = _proc.usable_cpus()
    warnings: list[str] = []
    if not pin or cpus is None or len(cpus) < 2:
        if pin and cpus is not None:
            warnings.append(
                "only one CPU is usable: the server and the load generator share "
                "it, so every figure is lower than on two"
            )
        return CpuPlan(None, (None,) * (clients or 1), None, tuple(warnings))
    server, others = cpus[:1], cpus[1:]
    count = clients or min(len(others), max_connections)
    if count > len(others):
        warnings.append(
            f"{count} load generator processes share {len(others)} CPU(s): "
            "they compete with one another"
        )
    layout = tuple((others[i % len(others)],) for i in range(count))
    return CpuPlan(tuple(server), layout, tuple(others), tuple(warnings))


class LoadGenerator:
    """A load generator process (:mod:`anyecho.bench.loadgen`), from the runner's end.

    :param cpus: the CPUs to pin it to, or ``None``
    :raises LoadGeneratorError: when it does not start
    """

    def __init__(self, cpus: Sequence[int] | None) -> None:
        command = _proc.python_command("anyecho.bench.loadgen")
        self._process = _proc.spawn(command, cpus)
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        self._replies = _proc.LineReader(self._process.stdout)
        self._errors = _proc.LineReader(self._process.stderr, pending=0)
        try:
            ready = self.receive("ready", LOADGEN_TIMEOUT)
        except LoadGeneratorError:
            self.stop()
            raise
        #: the event loop it runs on
        self.loop: str = ready["loop"]

    def send(self, **message: Any) -> None:
        """Send one command."""
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(message) + "\n")
            self._process.stdin.flush()
        except OSError:
            raise self._failed("stopped reading its commands") from None

    def receive(self, key: str, timeout: float) -> Any:
        """The value of the next reply, which must be a ``key`` message."""
        try:
            line = self._replies.get(timeout)
        except TimeoutError:
            raise self._failed(f"did not answer within {timeout:g}s") from None
        if line is None:
            raise self._failed("exited")
        try:
            return json.loads(line)[key]
        except (ValueError, KeyError, TypeError):
            raise self._failed(f"answered {line!r}") from None

    def _failed(self, what: str) -> LoadGeneratorError:
        self._errors.join(1.0)
        said = next((line for line in reversed(self._errors.tail) if line), "")
        return LoadGeneratorError(f"load generator {what}{': ' + said if said else ''}")

    def stop(self) -> None:
        """Close its input (it then exits), or stop it."""
        _proc.stop(self._process)


def split_connections(connections: int, processes: int) -> list[tuple[int, int]]:
    """Share ``connections`` among up to ``processes`` load generators.

    :return: for each one used, the number of its first connection and its count
    """
    used = min(connections, processes)
    shares = []
    first = 0
    for index in range(used):
        count = connections // used + (index < connections % used)
        shares.append((first, count))
        first += count
    return shares


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def measure(
    server: ServerProcess,
    run: PlannedRun,
    generators: Sequence[LoadGenerator],
    settings: Settings,
) -> Measurement:
    """Drive ``server`` with ``run``'s workload and measure one window."""
    workload = run.workload
    shares = split_connections(workload.connections, len(generators))
    active = generators[: len(shares)]
    for index, (generator, (first, count)) in enumerate(
        zip(active, shares, strict=True)
    ):
        rate = workload.rate
        job = Job(
            server.port,
            count,
            first,
            workload.size,
            workload.pipeline,
            rate=None if rate is None else rate * count / workload.connections,
            poisson=settings.poisson,
            seed=settings.seed * 1000 + run.index * 10 + index,
            host=server.host,
            unix=server.unix,
            tls_ca=server.tls_ca,
        )
        generator.send(job=asdict(job))
    for generator in active:
        generator.receive("connected", LOADGEN_TIMEOUT)
    start = time.monotonic() + GO_LEAD + settings.warmup
    window = Window(start, start + settings.duration, DRAIN_TIMEOUT)
    for generator in active:
        generator.send(go=asdict(window))
    _sleep_until(window.warmup_until)
    cpu_before = _proc.cpu_seconds(server.pid)
    _sleep_until(window.measure_until)
    cpu_after = _proc.cpu_seconds(server.pid)
    timeout = DRAIN_TIMEOUT + LOADGEN_TIMEOUT
    results = [
        JobResult.from_json(generator.receive("result", timeout))
        for generator in active
    ]
    measured = Measurement(window_s=settings.duration, requested_rate=workload.rate)
    if cpu_before is not None and cpu_after is not None:
        measured.server_cpu_s = cpu_after - cpu_before
    if (reason := server.exit_reason()) is not None:
        measured.errors.append(reason)
    for result in results:
        measured.echoes += result.echoes
        measured.latency.merge(result.latency)
        measured.lag.merge(result.lag)
        measured.scheduled += result.scheduled
        measured.client_cpu_s.append(result.cpu_s)
        measured.errors += result.errors
    return measured


class _Servers:
    """The running servers, started again when one has died."""

    def __init__(self, cpus: Sequence[int] | None, transport: str) -> None:
        self._cpus = cpus
        self._transport = transport
        self._running: dict[str, ServerProcess] = {}

    def start_all(self, specs: Sequence[ServerSpec]) -> list[ServerRecord]:
        """Start every server that can run here at once, then check each in turn.

        :return: how each one fared, in the order of ``specs``
        """
        missing = {spec.name: spec.unavailable(self._transport) for spec in specs}
        for spec in specs:
            if missing[spec.name] is None:
                self._running[spec.name] = ServerProcess(
                    spec, self._cpus, self._transport
                )
        return [
            _server_record(spec, "unavailable", reason)
            if (reason := missing[spec.name]) is not None
            else self._check(spec)
            for spec in specs
        ]

    def _check(self, spec: ServerSpec) -> ServerRecord:
        server = self._running[spec.name]
        try:
            server.wait_ready()
            server.check()
        except ServerError as exc:
            server.stop()
            del self._running[spec.name]
            return _server_record(spec, "unsupported", str(exc))
        return _server_record(spec, "ok", None)

    def names(self) -> list[str]:
        """The servers that passed their check."""
        return list(self._running)

    def get(self, name: str) -> ServerProcess:
        """The server ``name``, started again if it has exited.

        :raises ServerError: when it does not come back
        """
        server = self._running[name]
        if server.exit_reason() is None:
            return server
        server.stop()
        server = ServerProcess(server.spec, self._cpus, self._transport)
        self._running[name] = server
        server.wait_ready()
        server.check()
        return server

    def stop_all(self) -> None:
        """Stop every server."""
        for server in self._running.values():
            server.stop()


def _server_record(
    spec: ServerSpec, status: ServerStatus, reason: str | None
) -> ServerRecord:
    return {
        "name": spec.name,
        "description": spec.description,
        "command": spec.command,
        "status": status,
        "reason": reason,
    }


@contextlib.contextmanager
def _pinned(cpus: Sequence[int] | None) -> Iterator[None]:
    """Keep this process on ``cpus`` (if any) for the duration."""
    before = _proc.usable_cpus()
    if cpus is None or before is None:
        yield
        return
    _proc.pin(0, cpus)
    try:
        yield
    finally:
        _proc.pin(0, before)


def run_bench(settings: Settings, progress: Progress) -> Report:
    """Run the benchmark that ``settings`` describe; the report of what happened.

    On Ctrl-C (:exc:`KeyboardInterrupt`) between servers' start and the last run,
    the report holds the runs done so far and says it is incomplete.

    :raises LoadGeneratorError: when a load generator process fails
    """
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    specs = registry()
    for name, command in settings.custom:
        specs[name] = custom_spec(name, command)
    if settings.target is not None:
        specs["target"] = target_spec(*settings.target, settings.target_pid)
    for path in settings.pythons:
        python = Interpreter.probe(path)
        for name in settings.servers:
            base, at, version = name.rpartition("@")
            if at and version == python.version and base in specs:
                specs[name] = on_python(specs[base], python)
    plan = plan_cpus(settings.pin, settings.clients, max(settings.connections))
    warnings = list(plan.warnings)
    for warning in warnings:
        progress.message(f"warning: {warning}")
    servers = _Servers(plan.server, settings.transport)
    runs: list[RunRecord] = []
    skipped: list[SkippedRecord] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_pinned(plan.own))
        stack.callback(servers.stop_all)
        progress.message("starting the servers and load generators")
        generators = []
        for cpus in plan.clients:
            generators.append(LoadGenerator(cpus))
            stack.callback(generators[-1].stop)
        server_records = servers.start_all([specs[name] for name in settings.servers])
        for record in server_records:
            if record["status"] != "ok":
                progress.message(
                    f"{record['name']}: {record['status']}: {record['reason']}"
                )
        if settings.sweep:
            complete, workloads = _sweep(
                servers=servers,
                generators=generators,
                settings=settings,
                progress=progress,
                records=runs,
            )
        else:
            workloads = settings.workloads
            complete = _run_planned(
                workloads,
                servers=servers,
                generators=generators,
                settings=settings,
                progress=progress,
                records=runs,
                skipped=skipped,
            )
    settings_entry = settings_record(
        settings,
        drain_timeout=DRAIN_TIMEOUT,
        server_cpus=plan.server,
        client_cpus=plan.clients,
        loadgen_loop=generators[0].loop,
    )
    return build_report(
        created=created,
        complete=complete,
        settings=settings_entry,
        workloads=workloads,
        servers=server_records,
        runs=runs,
        warnings=warnings,
        skipped=skipped,
    )


def _run_planned(
    workloads: Sequence[Workload],
    *,
    servers: _Servers,
    generators: Sequence[LoadGenerator],
    settings: Settings,
    progress: Progress,
    records: list[RunRecord],
    skipped: list[SkippedRecord],
) -> bool:
    """Run every workload in interleaved rounds; ``False`` if interrupted.

    A workload whose first round found the load generator the limit for every
    server cannot be measured on this machine: its other rounds are skipped
    (and listed in ``skipped``, with the reason), since they would only measure
    the load generator again.
    """
    planned = schedule(servers.names(), workloads, settings.repeat)
    progress.begin(len(planned), len(planned) * _per_run(settings))
    context = _RunContext(
        servers=servers,
        generators=generators,
        settings=settings,
        progress=progress,
        records=records,
    )
    try:
        for workload in workloads:
            rounds = [run for run in planned if run.workload == workload]
            first = [run for run in rounds if run.round == 0]
            _run_each(first, **context)
            done = records[-len(first) :] if first else []
            if done and all(r["loadgen_limited"] for r in done):
                rest = [run for run in rounds if run.round > 0]
                if rest:
                    skipped.append(
                        {
                            "workload": workload.id,
                            "runs": len(rest),
                            "reason": "the load generator was the limit for every "
                            "server in the first round: this machine cannot measure "
                            "the servers here",
                        }
                    )
                continue
            rest = [run for run in rounds if run.round > 0]
            _run_each(rest, **context)
    except KeyboardInterrupt:
        return False
    finally:
        progress.end()
    return True


class _RunContext(TypedDict):
    servers: _Servers
    generators: Sequence[LoadGenerator]
    settings: Settings
    progress: Progress
    records: list[RunRecord]


def _per_run(settings: Settings) -> float:
    return settings.warmup + settings.duration + GO_LEAD + RUN_OVERHEAD


def _run_each(
    planned: Sequence[PlannedRun],
    *,
    servers: _Servers,
    generators: Sequence[LoadGenerator],
    settings: Settings,
    progress: Progress,
    records: list[RunRecord],
) -> None:
    """Carry out ``planned``, appending to ``records``."""
    for run in planned:
        progress.run_started(run)
        try:
            server = servers.get(run.server)
        except ServerError as exc:
            measured = Measurement(settings.duration, errors=[str(exc)])
        else:
            measured = measure(server, run, generators, settings)
        record = run_record(run, measured)
        records.append(record)
        progress.run_finished(run, record)


def _sweep(
    *,
    servers: _Servers,
    generators: Sequence[LoadGenerator],
    settings: Settings,
    progress: Progress,
    records: list[RunRecord],
) -> tuple[bool, list[Workload]]:
    """Offer rising rates, for each size and connection count, to the servers
    that held the last one; ``False`` if interrupted, and the workloads run.

    Each step runs the servers still going in interleaved rounds, as any plan.
    """
    workloads: list[Workload] = []
    most = (
        len(servers.names())
        * len(settings.sizes)
        * len(settings.connections)
        * settings.sweep_steps
        * settings.repeat
    )
    progress.message(f"a sweep of at most {most} runs")
    progress.begin(most, most * _per_run(settings))
    try:
        return _sweep_steps(
            servers=servers,
            generators=generators,
            settings=settings,
            progress=progress,
            records=records,
            workloads=workloads,
        )
    finally:
        progress.end()


def _sweep_steps(
    *,
    servers: _Servers,
    generators: Sequence[LoadGenerator],
    settings: Settings,
    progress: Progress,
    records: list[RunRecord],
    workloads: list[Workload],
) -> tuple[bool, list[Workload]]:
    for size in settings.sizes:
        for connections in settings.connections:
            going = servers.names()
            for rate in settings.sweep_rates():
                if not going:
                    break
                workload = Workload(size, connections, settings.pipeline, rate)
                workloads.append(workload)
                offset = len(records)
                planned = [
                    dataclasses.replace(run, index=run.index + offset)
                    for run in schedule(going, [workload], settings.repeat)
                ]
                if not _run_all(
                    planned,
                    servers=servers,
                    generators=generators,
                    settings=settings,
                    progress=progress,
                    records=records,
                    announce=False,
                ):
                    return False, workloads
                step = records[offset:]
                going = [
                    name
                    for name in going
                    if sweep_goes_on(
                        [r for r in step if r["server"] == name], settings.p99_limit_us
                    )
                ]
    return True, workloads


def _run_all(
    planned: Sequence[PlannedRun],
    *,
    servers: _Servers,
    generators: Sequence[LoadGenerator],
    settings: Settings,
    progress: Progress,
    records: list[RunRecord],
    announce: bool = True,
) -> bool:
    """Carry out ``planned``, appending to ``records``; ``False`` if interrupted.

    :param announce: tell ``progress`` where the runs begin and end
    """
    if announce:
        progress.begin(len(planned), len(planned) * _per_run(settings))
    try:
        _run_each(
            planned,
            servers=servers,
            generators=generators,
            settings=settings,
            progress=progress,
            records=records,
        )
    except KeyboardInterrupt:
        return False
    finally:
        if announce:
            progress.end()
    return True
